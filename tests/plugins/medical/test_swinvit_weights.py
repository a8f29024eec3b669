"""``ssl-domains import --plugin contrastive3d --format swinvit``: Swin UNETR's self-supervised encoder file in the
layout MONAI's ``SwinUNETR.load_from`` reads (weights_swinvit.py)."""

from __future__ import annotations

import pytest
import torch

from ssl_domains import UserError
from ssl_domains_medical.weights_swinvit import PRETRAINING, from_swinvit


def _swin_vit(feature_size: int = 12) -> torch.nn.Module:
    from monai.networks.nets import SwinUNETR

    torch.manual_seed(0)
    return SwinUNETR(in_channels=1, out_channels=1, feature_size=feature_size, spatial_dims=3).swinViT


def _released(swin_vit: torch.nn.Module) -> dict[str, torch.Tensor]:
    """model_swinvit.pt's names: ``module.`` and the original Swin MLP names, as ``load_from`` reads them."""
    return {"module." + k.replace(".mlp.linear1.", ".mlp.fc1.").replace(".mlp.linear2.", ".mlp.fc2."): v
            for k, v in swin_vit.state_dict().items()}  # fmt: skip


def test_released_layout_maps_onto_monai_names_and_is_what_load_from_reads():
    from monai.networks.nets import SwinUNETR

    swin = _swin_vit()
    weights = from_swinvit(_released(swin))
    assert weights.config["contrastive3d"] == {"backbone": "swin", "feature_size": 12, **PRETRAINING}
    theirs = SwinUNETR(in_channels=1, out_channels=1, feature_size=12, spatial_dims=3)
    theirs.load_from({"state_dict": _released(swin)})  # MONAI's own reader agrees on the layout
    for key, value in theirs.swinViT.state_dict().items():
        assert torch.equal(weights.state_dict[f"net.net.swinViT.{key}"], value), key
    assert len(weights.state_dict) == len(swin.state_dict())


def test_pretraining_checkpoint_heads_are_left_out():
    swin = _swin_vit()
    state = {f"module.swin_vit.{k}": v for k, v in swin.state_dict().items()}  # SSLHead's names (MONAI's linear1)
    state.update({"module.rotation_head.weight": torch.zeros(4, 96), "module.contrastive_head.bias": torch.zeros(512)})
    weights = from_swinvit(state)
    assert not any("head" in k for k in weights.state_dict)
    assert any("rotation_head" in note for note in weights.notes)


def test_other_files_are_refused_with_the_reason():
    released = _released(_swin_vit())
    with pytest.raises(UserError, match="not a Swin UNETR encoder"):
        from_swinvit({"module.encoder.weight": torch.zeros(1)})
    with pytest.raises(UserError, match="one channel"):
        from_swinvit({**released, "module.patch_embed.proj.weight": torch.zeros(12, 4, 2, 2, 2)})
    wrong_heads = {k: v for k, v in released.items() if "layers2.0.blocks.0.attn.relative_position_bias_table" not in k}
    wrong_heads["module.layers2.0.blocks.0.attn.relative_position_bias_table"] = torch.zeros(2197, 5)
    with pytest.raises(UserError, match="6 heads"):
        from_swinvit(wrong_heads)
    with pytest.raises(UserError, match="not a Swin UNETR encoder's"):
        from_swinvit({**released, "module.extra.weight": torch.zeros(1)})
