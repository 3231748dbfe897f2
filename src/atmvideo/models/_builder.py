"""Keyword handling shared by every model entry point (same names for ResNet and ViT models)."""

from __future__ import annotations

from typing import Any

# Entry-point keyword -> ATM constructor argument.
ATM_KWARGS: dict[str, str] = {
    "atm_ops": "ops",
    "atm_context": "context",
    "atm_include_self": "include_self",
    "atm_extractor": "extractor",
    "atm_style": "style",
    "atm_hidden": "hidden",
    "atm_patch_size": "patch_size",
    "atm_residual_act": "residual_act",
    "atm_downsample": "downsample",
}

# Temporal modules each model family has: (has ATM, T-Conv on by default).
FAMILIES: dict[str, tuple[bool, bool]] = {"atm": (True, True), "tconv": (False, True), "tsn": (False, False)}


def pop_temporal_options(family: str, kwargs: dict[str, Any]) -> tuple[dict[str, Any] | None, bool]:
    """Take the ATM and T-Conv keywords out of ``kwargs``: ``(ATM arguments or None, tconv on)``.

    Families without an ATM reject ``atm_*`` keywords, so an ablation typo cannot silently train a
    baseline; ``tsn`` models also reject ``tconv=True`` (use a ``tconv_*`` model).
    """
    has_atm, tconv_default = FAMILIES[family]
    tconv = bool(kwargs.pop("tconv", tconv_default))
    atm_keys = [key for key in kwargs if key.startswith("atm_") and key not in ("atm_stage", "atm_block")]
    if not has_atm:
        misplaced = atm_keys + [key for key in ("atm_stage", "atm_block") if key in kwargs]
        if misplaced:
            raise TypeError(f"{family}_* models have no ATM; unexpected keyword(s): {', '.join(misplaced)}")
        if family == "tsn" and tconv:
            raise TypeError(
                "tsn_* models have no temporal module; use a tconv_* or atm_* model for tconv=True"
            )
        return None, tconv
    unknown = [key for key in atm_keys if key not in ATM_KWARGS]
    if unknown:
        raise TypeError(f"unknown ATM keyword(s) {unknown}; valid: {', '.join(sorted(ATM_KWARGS))}")
    return {ATM_KWARGS[key]: kwargs.pop(key) for key in atm_keys}, tconv


def drop_timm_only_kwargs(name: str, kwargs: dict[str, Any]) -> None:
    """Remove the keywords ``timm.create_model`` passes to every entry point; reject real values.

    They configure hub downloads, which video models do not do: weights come from ``pretrained=<file>``.
    """
    for timm_only in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        if kwargs.pop(timm_only, None) is not None:
            raise TypeError(f"{name}: {timm_only!r} is not supported; pass pretrained=<local file>")
