"""The ``ip:`` section of a pipeline config: the owner watermark embedded at training."""

from __future__ import annotations

from pydantic import Field

from tinymlops.config_base import Strict


class WatermarkSection(Strict):
    """A trigger-set watermark (Adi et al. 2018): secret keyed inputs the model learns to label with secret labels."""

    triggers: int = Field(100, ge=20, le=2000, description="trigger inputs in the secret set")
    repeat: int = Field(8, ge=1, le=100, description="copies of the trigger set mixed into the training data "
                        "and into the compress stage's fine-tuning")


class IpSection(Strict):
    """Model IP protection of this project (see docs/ip.md)."""

    watermark: WatermarkSection | None = Field(None, description="embed an owner watermark when training")
