"""What each engine adapter knows about its own arguments: the batch one replica runs at once."""

from tidal.api.v1alpha1 import parse_spec
from tidal.controller.autoscaler import policy_of
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
