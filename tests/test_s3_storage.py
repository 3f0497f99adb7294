"""Files and batch progress in an S3 bucket (tidal/clients/s3.py), against a real S3 server: S3Proxy from
Maven Central (tests/s3_server.py). The same contract as the directory storage, the appends S3 lacks, and a
gateway SIGKILLed mid-batch that resumes from the bucket."""

from __future__ import annotations

import threading

import pytest

from tests.s3_server import s3_server
from tests.test_batches import Processes, killed_mid_batch_resumes
from tidal.gateway.batches.storage import DirectoryStorage
from tidal.clients.s3 import FOLD_AFTER, S3Storage


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture(params=["directory", "s3"])
def storage(request, tmp_path, s3):
    if request.param == "directory":
        return lambda: DirectoryStorage(tmp_path / "store")
    return lambda: S3Storage(f"s3://tidal/{tmp_path.name}", s3.client())


def test_put_get_names_delete(storage):
    store = storage()
    assert store.get("files/a.json") is None and store.names("files") == []
    store.put("files/a.json", b"first")
    store.put("files/a.json", b"second")
    store.put("files/b.data", b"\x00\xff")
    store.append("files/b/output.jsonl", b"x\n")  # in a sub-folder: not a name directly under files/
    assert store.get("files/a.json") == b"second" and store.get("files/b.data") == b"\x00\xff"
    assert store.names("files") == ["files/a.json", "files/b.data"]
    assert store.delete("files/a.json") and not store.delete("files/a.json")
    assert store.names("files") == ["files/b.data"]
    with pytest.raises(ValueError):
        store.put("../escape", b"")


def test_a_large_object_is_written_in_pieces_and_read_back_as_lines_only_once_committed(storage):
    """20 MiB in 1 MiB writes: on S3 a multipart upload of three parts (8 MiB each but the last), nothing under
    the name before commit; an aborted writer leaves nothing; lines stream back as they were written."""
    store = storage()
    line = b'{"custom_id": "%06d", "pad": "' + b"x" * 1000 + b'"}'
    writer = store.writer("files/big.data")
    sent = 0
    while sent < 20 << 20:
        chunk = b"".join(line % i + b"\n" for i in range(sent // 1034, sent // 1034 + 1014))
        writer.write(chunk)
        sent += len(chunk)
        assert store.get("files/big.data") is None and store.lines("files/big.data") is None
    writer.commit()
    got = list(store.lines("files/big.data"))
    assert len(got) == sent // len(line % 0 + b"\n") and got[0] == line % 0 and got[-1].startswith(b'{"custom_id"')
    assert b"\n".join(got) + b"\n" == store.get("files/big.data")
    aborted = store.writer("files/gone.data")
    aborted.write(b"y" * (9 << 20))  # past one part: the multipart upload has begun
    aborted.abort()
    assert store.get("files/gone.data") is None and store.names("files") == ["files/big.data"]


def test_appends_from_many_threads_read_back_once_each_across_folds_and_a_restart(storage):
    """600 result lines from 8 threads (the runner's workers append concurrently), then a restarted
    gateway's new storage object appends 100 more: every line once, in the order each thread wrote it."""
    store = storage()
    name = "batches/b/output.jsonl"

    def worker(t):
        for i in range(75):
            store.append(name, f"{t} {i}\n".encode())
    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    restarted = storage()
    for i in range(100):
        restarted.append(name, f"r {i}\n".encode())
    lines = restarted.get(name).decode().splitlines()
    assert sorted(lines) == sorted([f"{t} {i}" for t in range(8) for i in range(75)] + [f"r {i}" for i in range(100)])
    for t in [*map(str, range(8)), "r"]:
        mine = [int(line.split()[1]) for line in lines if line.split()[0] == t]
        assert mine == sorted(mine)
    assert restarted.names("batches") == []  # the appended file lives in batches/b/, not directly under
    assert restarted.delete(name) and restarted.get(name) is None


def test_s3_folds_appends_into_few_objects(s3, tmp_path):
    store = S3Storage(f"s3://tidal/{tmp_path.name}", s3.client())
    for i in range(2 * FOLD_AFTER + 10):
        store.append("out.jsonl", f"{i}\n".encode())
    keys = [o["Key"].rsplit("/", 1)[1] for o in
            s3.client().list_objects_v2(Bucket="tidal", Prefix=f"{tmp_path.name}/out.jsonl.d/")["Contents"]]
    assert len(keys) == 12 and keys[0] == f"{0:012d}-{FOLD_AFTER - 1:012d}", keys
    assert store.get("out.jsonl").decode().split() == [str(i) for i in range(2 * FOLD_AFTER + 10)]


def test_s3_a_fold_cut_short_by_a_kill_never_repeats_a_line(s3, tmp_path):
    """A kill between writing a folded range and deleting the segments it covers leaves both. The state is
    written by hand through the real server (a kill at that instant cannot be timed); reads skip what
    the range covers."""
    client, prefix = s3.client(), f"{tmp_path.name}/out.jsonl.d/"
    for i in range(4):
        client.put_object(Bucket="tidal", Key=f"{prefix}{i:012d}", Body=f"{i}\n".encode())
    client.put_object(Bucket="tidal", Key=f"{prefix}{0:012d}-{2:012d}", Body=b"0\n1\n2\n")
    store = S3Storage(f"s3://tidal/{tmp_path.name}", client)
    store.append("out.jsonl", b"4\n")
    assert store.get("out.jsonl") == b"0\n1\n2\n3\n4\n"


def test_a_gateway_on_s3_killed_mid_batch_resumes_and_every_custom_id_appears_exactly_once(s3, tmp_path):
    """`tidal activator --batch-storage s3://...` with the endpoint and key in the AWS_* variables, as a
    Deployment gets them from a Secret. 600 requests: the results cross two folds, one after the restart."""
    killed_mid_batch_resumes(Processes(tmp_path, storage=f"s3://tidal/{tmp_path.name}", env=s3.env), count=600)
    assert s3.client().list_objects_v2(Bucket="tidal", Prefix=f"{tmp_path.name}/files/")["KeyCount"] >= 2
