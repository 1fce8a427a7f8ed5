"""SparseDropout must be nn.Dropout in distribution: rate, independence, scaling, gradient, modes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from honed.training.dropout import SparseDropout, dropped_positions, use_sparse_dropout


@pytest.mark.parametrize(("n", "p"), [(1, 0.05), (10, 0.2), (1000, 0.01), (200_000, 0.05), (300_000, 0.1)])
def test_positions_are_sorted_unique_in_range_at_rate_p(n: int, p: float) -> None:
    torch.manual_seed(0)
    counts = []
    for _ in range(20):
        pos = dropped_positions(n, p)
        assert pos.dtype == torch.int64
        if pos.numel():
            assert int(pos.min()) >= 0 and int(pos.max()) < n
            assert bool((pos[1:] > pos[:-1]).all())
        counts.append(pos.numel())
    mean, sd = sum(counts) / len(counts), math.sqrt(n * p * (1 - p) / len(counts))
    assert abs(mean - n * p) <= 5 * sd + 1e-9


def test_drops_are_independent_and_uniform_over_positions() -> None:
    """Neighbours drop together at rate p^2, and every region of the tensor drops at rate p."""
    torch.manual_seed(1)
    n, p, rounds = 100_000, 0.1, 30
    both = hits = 0
    per_decile = torch.zeros(10)
    for _ in range(rounds):
        mask = torch.zeros(n, dtype=torch.bool)
        mask[dropped_positions(n, p)] = True
        both += int((mask[1:] & mask[:-1]).sum())
        hits += int(mask.sum())
        per_decile += mask.view(10, -1).float().sum(1)
    pairs = rounds * (n - 1)
    assert abs(both / pairs - p * p) < 5 * math.sqrt(p * p / pairs)
    assert abs(hits / (rounds * n) - p) < 5 * math.sqrt(p * (1 - p) / (rounds * n))
    rate = per_decile / (rounds * n / 10)
    assert bool(((rate - p).abs() < 5 * math.sqrt(p * (1 - p) / (rounds * n / 10))).all())


def test_forward_scales_kept_and_zeroes_dropped_and_backward_matches() -> None:
    torch.manual_seed(2)
    x = torch.randn(4, 33, 64, requires_grad=True)
    y = SparseDropout(0.1).train()(x)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / 0.9)
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / 0.9)
    assert abs(y.detach().mean().item() - x.detach().mean().item()) < 0.1


@pytest.mark.parametrize("p", [0.0, 0.5])
def test_zero_and_large_rates_behave_as_nn_dropout(p: float) -> None:
    x = torch.ones(10_000)
    torch.manual_seed(3)
    expect = torch.nn.Dropout(p).train()(x)
    torch.manual_seed(3)
    torch.testing.assert_close(SparseDropout(p).train()(x), expect)


def test_eval_mode_is_identity() -> None:
    x = torch.randn(100)
    assert SparseDropout(0.05).eval()(x) is x


def test_swaps_peft_lora_dropout_only(tiny_llama: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama),
                           LoraConfig(r=4, lora_dropout=0.05, target_modules=["q_proj", "v_proj"]))
    n_layers = model.config.num_hidden_layers
    assert use_sparse_dropout(model) == 2 * n_layers
    drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert sum(type(m) is SparseDropout for m in drops) == 2 * n_layers
    assert use_sparse_dropout(model) == 0  # already swapped
