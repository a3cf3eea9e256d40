"""Shared test fixtures."""
from __future__ import annotations

import pytest

TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {{ eos_token }} {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)

_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "what is the capital of france ? paris is the capital of france .",
    "please write a short poem about the sea and the sky",
    "a helpful assistant answers questions clearly and briefly",
    "hello world , how are you today ? i am fine , thank you",
    "explain gradient descent in simple words for a child",
    "system user assistant criterion prefers concise answers",
]


def build_tiny_llama(path, seed: int = 0, chat_template: str | None = TINY_CHAT_TEMPLATE):
    """Save a tiny random LlamaForCausalLM plus an offline WordLevel tokenizer with a chat template."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
    tk = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.train_from_iterator(_CORPUS, trainers.WordLevelTrainer(special_tokens=specials))
    # add_special_tokens=True prepends BOS (the chat template writes its own BOS instead)
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                      special_tokens=[("<s>", tk.token_to_id("<s>"))])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>", additional_special_tokens=specials[4:],
                                  model_max_length=512)
    if chat_template:
        tok.chat_template = chat_template
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A tiny random Llama (hidden 64, 2 layers, 2 heads) with a chat-template tokenizer, saved to a tmp dir."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_llama") / "tiny-llama")
