import numpy as np
import pytest

from heads import align_heads, cosine_matrix, mean_aligned_cosine


def test_recovers_permutation():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((5, 8))
    perm = np.array([3, 0, 4, 1, 2])
    B = np.empty_like(A)
    B[perm] = 2.0 * A + 0.01 * rng.standard_normal((5, 8))  # B[perm[i]] ~ A[i], scaled
    np.testing.assert_array_equal(align_heads(A, B), perm)
    assert mean_aligned_cosine(A, B) > 0.999
    assert mean_aligned_cosine(A, -B) < 0.5


def test_cosine_matrix_and_errors():
    C = cosine_matrix(np.eye(2), np.array([[1.0, 1.0], [0.0, 0.0]]))
    np.testing.assert_allclose(C, [[2**-0.5, 0], [2**-0.5, 0]])
    with pytest.raises(ValueError):
        cosine_matrix(np.eye(2), np.eye(3))
    with pytest.raises(ValueError):
        align_heads(np.eye(3), np.eye(3)[:2])
