"""The fused LoRA layer must give peft's outputs and gradients (same dropout draws, same seed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from honed.training.dropout import use_sparse_dropout
from honed.training.fused_lora import fused_lora


def _model(path: Path, dropout: float, targets: list[str], dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    # A bf16 base keeps fp32 adapters (peft's autocast_adapter_dtype), as honed trains on bf16 CPUs.
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(path, dtype=dtype),
                           LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=targets))
    with torch.no_grad():  # B starts at zero in peft: make the adapter matter
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    use_sparse_dropout(model)
    return model.train()


def _loss_and_grads(model: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(123)
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(("dropout", "dtype"), [(0.0, torch.float32), (0.1, torch.float32), (0.1, torch.bfloat16)])
def test_fused_matches_peft(tiny_causal_lm: Path, dropout: float, dtype: torch.dtype) -> None:
    from transformers import AutoConfig

    targets = {"llama": ["q_proj", "v_proj", "down_proj"], "phi3": ["qkv_proj", "gate_up_proj", "o_proj"]}[
        AutoConfig.from_pretrained(tiny_causal_lm).model_type]
    model = _model(tiny_causal_lm, dropout, targets, dtype)
    rel = 1e-5 if dtype == torch.float32 else 1e-2  # bf16: gradients of the bf16 activations round (4e-3 seen)
    ids = torch.randint(3, 200, (2, 12))
    ref_logits, ref_grads = _loss_and_grads(model, ids)
    with fused_lora(model) as n:
        assert n == len(targets) * model.config.num_hidden_layers
        logits, grads = _loss_and_grads(model, ids)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    assert grads.keys() == ref_grads.keys() and grads
    for name, g in grads.items():
        assert g.dtype == torch.float32  # the adapter stays fp32 on a bf16 base
        ref = ref_grads[name]
        assert float((g - ref).abs().max()) <= rel * float(ref.abs().max()), name
    # Leaving the block restores peft's forward.
    assert all("forward" not in vars(m) for m in model.modules())


def test_other_layers_and_calls_fall_back_to_peft(tiny_llama: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    dora = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama),
                          LoraConfig(r=4, use_dora=True, target_modules=["q_proj"]))
    ids = torch.randint(3, 200, (1, 8))
    with torch.no_grad():
        ref = dora(input_ids=ids).logits
        with fused_lora(dora):  # installed, but DoRA layers take peft's path
            torch.testing.assert_close(dora(input_ids=ids).logits, ref)


def test_bf16_training_attends_in_fp32_and_restores_sdpa(tiny_llama: Path) -> None:
    from transformers import AutoModelForCausalLM

    from honed.training.attention import fp32_attention

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.bfloat16, attn_implementation="sdpa")
    ids = torch.randint(3, 200, (2, 10))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits.float()
        exact = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32, attn_implementation="sdpa")(
            input_ids=ids, attention_mask=mask).logits
        with fp32_attention(model) as switched:
            assert switched and model.config._attn_implementation != "sdpa"
            out = model(input_ids=ids, attention_mask=mask).logits.float()
    assert model.config._attn_implementation == "sdpa"
    # Same model up to bf16 rounding, and no further from the fp32 model than bf16 attention is.
    assert float((out - exact).abs().max()) <= float((ref - exact).abs().max()) * 1.5 + 1e-3
    with fp32_attention(AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)) as switched:
        assert not switched
