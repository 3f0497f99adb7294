"""What each engine adapter knows about its own arguments: the batch one replica runs at once."""

from tidal.api.v1alpha1 import parse_spec
from tidal.controller.scaling_inputs import policy_of
from tidal.engines import engine


def test_vllm_batch_size_reads_both_spellings_of_max_num_seqs_and_defaults_to_256():
    vllm = engine("vllm")
    assert vllm.batch_size([]) == 256
    assert vllm.batch_size(["--max-num-seqs=48"]) == 48
    assert vllm.batch_size(["--enforce-eager", "--max-num-seqs", "12"]) == 12
    assert vllm.batch_size(["--max-num-seqs=lots"]) == 256  # not a number: vLLM would refuse it; no guess
    assert vllm.batch_size(["--max-num-seqs"]) == 256


def test_triton_reports_no_batch_so_only_its_queue_counts():
    assert engine("triton").batch_size(["--max-num-seqs=48"]) == 0


def _spec(engine_type, args, **scaling):
    return parse_spec({"engine": {"type": engine_type, "args": args}, "model": {"uri": "hf://org/m"},
                       "placement": {"nodePool": "h100"}, "scaling": scaling})


def test_the_policy_takes_the_batch_from_the_engine_unless_a_custom_query_replaces_its_signals():
    assert policy_of(_spec("vllm", ["--max-num-seqs=48"])).max_concurrency == 48
    assert policy_of(_spec("triton", [])).max_concurrency == 0
    assert policy_of(_spec("vllm", ["--max-num-seqs=48"], query="sum(my_queue)")).max_concurrency == 0


def _nodes(*labels):
    return [{"metadata": {"labels": {"tidal.dev/pool": "h100", **ls}}} for ls in labels]


def test_vllm_default_batch_follows_vllms_rule_by_gpu():
    """vllm/engine/arg_utils.py (get_batch_defaults): 1,024 on GPUs of 70 GiB or more that are not A100s
    and on any of 160 GiB or more; 256 elsewhere; Tidal takes 256 when it cannot tell, and says so."""
    from tidal.engines.gpus import Gpu, gpu_of
    vllm = engine("vllm")
    for product, size in [("NVIDIA-H100-80GB-HBM3", 1024), ("NVIDIA-H200", 1024), ("NVIDIA-B200", 1024),
                          ("NVIDIA-A100-SXM4-80GB", 256), ("NVIDIA-L4", 256), ("Tesla-T4", 256)]:
        batch = vllm.batch([], gpu_of(product, []))
        assert (batch.size, batch.known) == (size, True), product
        assert product in batch.source
    unknown = vllm.batch([], None)
    assert (unknown.size, unknown.known) == (256, False) and "gpuProduct" in unknown.source
    assert vllm.batch([], Gpu("Some-Future-GPU", None)).known is False
    assert vllm.batch(["--max-num-seqs=48"], gpu_of("NVIDIA-H200", [])).size == 48  # the args win


def test_the_gpu_comes_from_the_spec_else_the_pools_one_product_and_its_memory_label():
    from tidal.engines.gpus import gpu_of
    h100 = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/gpu.memory": "81559"}
    l40s = {"nvidia.com/gpu.product": "NVIDIA-L40S"}
    assert gpu_of(None, [h100, h100]).memory_gib == 81559 / 1024
    assert gpu_of(None, [h100, l40s]) is None  # a mixed pool: the product cannot be told
    assert gpu_of("NVIDIA-L40S", [h100, l40s]).memory_gib == 48
    spec = _spec("vllm", [])
    from tidal.planning.checks import replica_gpu
    assert replica_gpu(spec, _nodes(h100), "tidal.dev/pool").product == "NVIDIA-H100-80GB-HBM3"
    assert policy_of(spec, replica_gpu(spec, _nodes(h100), "tidal.dev/pool")).max_concurrency == 1024
    assert policy_of(spec).max_concurrency == 256
