"""Integrations with model libraries. ``vtp_ext.integrations.hf``: HF ``transformers`` LLaVA (needs the
optional dependency: ``pip install 'vtp_ext[hf]'``). Imported on demand, so ``import vtp_ext`` never needs
transformers."""

__all__ = ["hf"]
