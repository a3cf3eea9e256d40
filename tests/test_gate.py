"""Gate parameter format, numpy/torch twins, and the fused-pass gradient helpers."""

import numpy as np
import pytest
import torch

from heads import gate as G
from heads.objective import Problem


@pytest.mark.parametrize("kind,hidden", [("linear", None), ("mlp", 7), ("static", None)])
def test_format_and_torch_twin(kind, hidden):
    rng = np.random.default_rng(0)
    K, p, n = 4, 5, 30
    params = G.init_gate_params(kind, K, p, hidden, rng, scale=1.0)
    expected = {
        "linear": {"coef": (K, p), "intercept": (K,)},
        "mlp": {"hidden_coef": (hidden, p), "hidden_intercept": (hidden,), "coef": (K, hidden), "intercept": (K,)},
        "static": {"logits": (K,)},
    }[kind]
    assert {k: v.shape for k, v in params.items()} == expected
    if kind == "static":
        params["logits"] = rng.standard_normal(K)
    assert G.gate_kind(params) == kind
    X = rng.standard_normal((n, p))
    a = G.gate_logits(params, X)
    assert a.shape == (n, K)
    lw = G.gate_log_weights(params, X)
    np.testing.assert_allclose(np.exp(lw).sum(1), 1.0, atol=1e-12)
    np.testing.assert_allclose(lw, a - np.log(np.exp(a).sum(1, keepdims=True)), atol=1e-12)
    at = G.gate_logits_torch(G.params_to_torch(params), torch.from_numpy(X))
    np.testing.assert_allclose(at.numpy(), a, atol=1e-10)
    back = G.params_from_torch(G.params_to_torch(params))
    for k in params:
        np.testing.assert_array_equal(back[k], params[k])


def test_static_gate_without_prompt():
    params = {"logits": np.array([0.0, np.log(3.0)])}
    w = G.gate_weights(params, None, n_rows=3)
    np.testing.assert_allclose(w, [[0.25, 0.75]] * 3)


def test_bad_dict_rejected():
    with pytest.raises(ValueError):
        G.gate_kind({"foo": np.zeros(2)})


@pytest.mark.parametrize("kind,hidden", [("linear", None), ("mlp", 6), ("static", None)])
def test_fused_gate_gradient_matches_autograd(kind, hidden):
    """The gate part of the fused-pass gradient equals torch autograd of sum(ga * logits)."""
    rng = np.random.default_rng(1)
    n, d, p, K = 50, 4, 3, 3
    D, X = rng.standard_normal((n, d)), rng.standard_normal((n, p))
    prob = Problem(D, X, K, kind, 0.3, 0.0, hidden)
    gp = G.init_gate_params(kind, K, p, hidden, rng, scale=1.0)
    if kind == "static":
        gp["logits"] = rng.standard_normal(K)
    W = rng.standard_normal((K, d))
    theta = prob.packer.pack(W, gp)
    ev = prob.evaluate(theta)
    _, gg = prob.packer.unpack(ev.gL)
    tp = G.params_to_torch(gp, requires_grad=True)
    Wt = torch.tensor(W, requires_grad=True)
    logf = torch.log_softmax(G.gate_logits_torch(tp, torch.from_numpy(X), n_rows=n), 1)
    loss = -torch.logsumexp(logf + torch.nn.functional.logsigmoid(torch.from_numpy(D) @ Wt.T), 1).mean()
    loss = loss + 0.3 * (logf.exp() * logf).sum(1).mean()
    loss.backward()
    assert abs(loss.item() - ev.L) < 1e-10
    for k in gp:
        np.testing.assert_allclose(gg[k], tp[k].grad.numpy(), atol=1e-9, err_msg=k)
