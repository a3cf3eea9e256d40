"""Shared test fixtures."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest

TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {{ eos_token }} {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)

# Ray started by the tests (local ray.init, the two-node cluster) stays on loopback: with this variable every Ray
# process takes 127.0.0.1 as its node address instead of the host's interface address.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a token in ~/.ray of another Ray user is not ours

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
    tk.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", tk.token_to_id("<s>"))]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=specials[4:],
        model_max_length=512,
    )
    if chat_template:
        tok.chat_template = chat_template
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A tiny random Llama (hidden 64, 2 layers, 2 heads) with a chat-template tokenizer, saved to a tmp dir."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_llama") / "tiny-llama")


# --- embedding cache / micro embed fixtures (tests/test_store.py, test_embed.py, test_features.py) ---------------


class PlainTextBackend:
    """Backend-protocol stand-in without a model: plain rendering, whitespace token counts; subclasses embed."""

    def render_response(self, prompt, response: str) -> str:
        from pipeline.embed.backends.base import render_plain

        return render_plain([*prompt, {"role": "assistant", "content": response}])

    def render_prompt(self, prompt) -> str:
        from pipeline.embed.backends.base import render_plain

        return render_plain(prompt)

    def token_lengths(self, inputs):
        import numpy as np

        return np.array([len(t.split()) for t in inputs], dtype=np.int64)

    def close(self) -> None:
        pass


class FakeBackend(PlainTextBackend):
    """Backend protocol stand-in: deterministic vectors from a hash of the exact input, no model.

    ``calls`` records the inputs of every ``embed`` call.  ``die_after=N`` makes the (N+1)-th ``embed`` call
    fail the way ``die_how`` says: 'sigkill' (SIGKILL to itself), 'exit' (os._exit(137)), 'sigint' (SIGINT to
    itself, i.e. Ctrl-C) or 'keyboard' (raise KeyboardInterrupt).  ``token_lengths`` counts words.
    """

    name = "fake"

    def __init__(
        self,
        dim: int = 8,
        max_length: int = 10_000,
        chunk_size: int = 4,
        die_after: int | None = None,
        die_how: str = "sigkill",
        tag: str = "v1",
    ):
        self.dim, self.max_length, self.chunk_size = dim, max_length, chunk_size
        self.die_after, self.die_how, self.tag = die_after, die_how, tag
        self.calls: list[list[str]] = []

    @staticmethod
    def vector(text: str, dim: int = 8):
        """The vector this backend gives ``text``: uniform in [-1, 1), seeded by sha256(text)."""
        import hashlib

        import numpy as np

        seed = int.from_bytes(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:8], "little")
        return np.random.default_rng(seed).uniform(-1.0, 1.0, dim).astype(np.float32)

    @property
    def embedded(self) -> list[str]:
        return [t for c in self.calls for t in c]

    def fingerprint(self) -> dict:
        return {
            "backend": self.name,
            "model": "sha256-uniform",
            "tag": self.tag,
            "dim": self.dim,
            "max_length": self.max_length,
            "chat_template": None,
        }

    def maybe_die(self, done: int) -> None:
        """Die as ``die_how`` says once ``done`` calls have finished and ``die_after`` is reached."""
        import os
        import signal

        if self.die_after is not None and done >= self.die_after:
            if self.die_how == "sigkill":
                os.kill(os.getpid(), signal.SIGKILL)
            elif self.die_how == "exit":
                os._exit(137)
            elif self.die_how == "sigint":
                os.kill(os.getpid(), signal.SIGINT)
                import time

                time.sleep(5)  # the KeyboardInterrupt arrives here
            raise KeyboardInterrupt

    def embed(self, inputs):
        import numpy as np

        self.maybe_die(len(self.calls))
        self.calls.append(list(inputs))
        return np.stack([self.vector(t, self.dim) for t in inputs]) if inputs else np.empty((0, self.dim), np.float32)

    def close(self) -> None:
        pass


class FakeTokenBackend(FakeBackend):
    """FakeBackend with the transformers backend's token-level interface (see ``pipeline.embed.stream``).

    Token ids are word hashes; a text's vector depends on its ids only (``FakeTokenBackend.vector_of(text)``).
    ``capacity`` is how many token slots one pass holds: a bigger batch raises ``torch.OutOfMemoryError``, as CUDA
    does. ``launched`` records the token ids of every successful pass; ``die_after=N`` makes the (N+1)-th pass die
    the way ``die_how`` says (as FakeBackend's ``embed`` does).
    """

    name = "fake-tokens"

    def __init__(
        self,
        *,
        max_batch_tokens: int = 64,
        capacity: int | None = None,
        packed: bool = False,
        max_batch_rows: int | None = None,
        **kw,
    ):
        super().__init__(**kw)
        self.max_batch_tokens, self.capacity, self.packed = max_batch_tokens, capacity, packed
        self.max_batch_rows = max_batch_rows
        self.launched: list[list[list[int]]] = []
        self.released = 0

    @staticmethod
    def ids_of(text: str) -> list[int]:
        import hashlib

        return [int(hashlib.md5(w.encode()).hexdigest()[:6], 16) for w in text.split()]

    @classmethod
    def vector_of(cls, text: str, dim: int = 8):
        return cls.vector(" ".join(map(str, cls.ids_of(text))), dim)

    def encode(self, texts):
        return [self.ids_of(t)[-self.max_length :] for t in texts]

    def collate(self, ids):
        return list(ids)

    def launch(self, batch):
        import numpy as np
        import torch

        from pipeline.embed.backends.batching import batch_cost

        self.maybe_die(len(self.launched))
        cost = batch_cost([len(x) for x in batch], self.packed)
        if self.capacity is not None and cost > self.capacity:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {cost} token slots")
        self.launched.append(batch)
        return np.stack([self.vector(" ".join(map(str, x)), self.dim) for x in batch])

    def finish(self, handle):
        return handle

    def release_memory(self):
        self.released += 1


@pytest.fixture
def fake_backend():
    """Factory for FakeBackend instances (see the class)."""
    return FakeBackend


def make_pair_rows(n_prompts: int = 3, *, context_every: int = 2) -> list[dict]:
    """Small pair rows: per prompt two pairs sharing the prompt and the chosen response (one with a context)."""
    rows = []
    for p in range(n_prompts):
        prompt = [{"role": "user", "content": f"question {p} about topic {p % 2}"}]
        for j in range(2):
            ctx = f"criterion {p % 2}: prefer short answers" if (p * 2 + j) % context_every == 0 else None
            rows.append(
                {
                    "pair_id": f"p{p}-{j}",
                    "prompt": prompt,
                    "chosen": f"good answer {p}",
                    "rejected": f"bad answer {p} variant {j} " + "word " * (3 * j + p),
                    "group": f"g{p % 2}",
                    "context": ctx,
                    "split": "test" if p == 0 else "train",
                    "source": "test",
                }
            )
    return rows


@pytest.fixture
def pair_table(tmp_path):
    """Write pair rows (default: make_pair_rows()) as a pair table; returns its path."""
    from pipeline.data.schema import pairs_to_table, write_pairs

    def write(rows: list[dict] | None = None, name: str = "pairs.parquet"):
        return write_pairs(pairs_to_table(make_pair_rows() if rows is None else rows), tmp_path / name)

    return write


@pytest.fixture(scope="session")
def dsp_sample_pairs(tmp_path_factory):
    """The first 15 pairs of `micro data prepare dsp pipeline/sample/dsp_sample.json` as a pair table."""
    from pathlib import Path

    from pipeline.data.prepare import prepare
    from pipeline.data.schema import read_pairs, write_pairs

    d = tmp_path_factory.mktemp("dsp_sample")
    sample = Path(__file__).resolve().parents[1] / "pipeline/sample/dsp_sample.json"
    prepare("dsp", [sample], d / "all.parquet", verbose=False)
    return write_pairs(read_pairs(d / "all.parquet").slice(0, 15), d / "pairs15.parquet")


@pytest.fixture
def one_torch_thread():
    """Run a test's forward passes on one thread (the 2 CI cores are shared; OpenMP spin-waits otherwise)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def st_backend():
    """The default sentence-transformers backend (bundled all-MiniLM-L6-v2), weights loaded once per session."""
    from pipeline.embed.backends.st import SentenceTransformersBackend

    be = SentenceTransformersBackend(batch_size=8)
    be.load()
    yield be
    be.close()


class ReadOnly:
    """Make paths read-only for a test: chmod for a normal user; root ignores modes, so there each file and
    folder is made immutable (chattr +i), and the test is skipped where the file system cannot do that."""

    def __init__(self):
        self.frozen = []

    def __call__(self, path):
        tree = [path, *sorted(path.rglob("*"))] if path.is_dir() else [path]
        for q in tree:
            if os.geteuid() != 0:
                q.chmod(q.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
            else:
                r = subprocess.run(["chattr", "+i", str(q)], capture_output=True)
                if r.returncode:
                    pytest.skip(f"root cannot make {q} read-only here (chattr: {r.stderr.decode().strip()})")
            self.frozen.append(q)
        return path

    def undo(self):
        for q in reversed(self.frozen):
            if os.geteuid() != 0:
                q.chmod(q.stat().st_mode | stat.S_IWUSR)
            else:
                subprocess.run(["chattr", "-i", str(q)], capture_output=True)
        self.frozen.clear()


@pytest.fixture
def read_only():
    """``read_only(path)`` makes ``path`` (recursively) read-only until the end of the test."""
    ro = ReadOnly()
    yield ro
    ro.undo()


# --- object-store caches (tests/test_objstore.py; the Ray tests reuse them) --------------------------------------
@pytest.fixture(scope="session")
def s3_endpoint():
    """The URL of a moto S3 server on 127.0.0.1 for the whole session (stopped at its end)."""
    from _s3 import moto_server

    with moto_server() as url:
        yield url


@pytest.fixture
def s3_bucket(s3_endpoint, monkeypatch):
    """``s3://NAME`` of a fresh, empty bucket on the session's moto server; the AWS environment (fake credentials,
    AWS_ENDPOINT_URL) points at it for this test only."""
    from _s3 import UNSET, new_bucket, s3_env

    for k in UNSET:
        monkeypatch.delenv(k, raising=False)
    for k, v in s3_env(s3_endpoint).items():
        monkeypatch.setenv(k, v)
    return new_bucket(s3_endpoint)
