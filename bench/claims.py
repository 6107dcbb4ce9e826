"""The seed's claims (Chen et al., TPAMI 2018) read off one several-model ``bench`` result: ASPP-L against
LargeFOV, atrous rates against none, the decoder, the CRF's gain and multi-scale + flip's gain per model, and
the held-out INT8 change, each a difference of two cells measured in the same run on the same images.

Models are told apart by what their rows say they are (``model_info``: architecture and ASPP rates), not by
file name. A claim whose two cells are not both in the result is reported as missing, never filled in.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ROLES", "model_role", "seed_claims", "claims_markdown"]

#: what each role is, and what the seed says of it (the figures the issue quotes)
ROLES = {
    "largefov": "DeepLab-LargeFOV (one 3x3 conv, rate 12)",
    "aspp_l": "DeepLab-v2 ASPP-L (rates 6/12/18/24, logits summed)",
    "v3_rateless": "DeepLab-v3 head without atrous branches (1x1 + image pooling)",
    "v3_rates": "DeepLab-v3 ASPP (rates 6/12/18 + image pooling)",
    "v3plus": "DeepLab-v3+ (ASPP + stride-4 decoder)",
}


def model_role(info: dict[str, Any]) -> str | None:
    """The role of a model from its architecture and ASPP rates, or None for another model."""
    arch, rates = info.get("arch"), list(info.get("aspp_rates") or [])
    if arch == "deeplab_largefov_mobilenet_v2":
        return "largefov"
    if arch == "deeplabv2_mobilenet_v2":
        return "aspp_l"
    if arch == "deeplabv3_mobilenet_v2":
        return "v3_rates" if rates else "v3_rateless"
    if arch == "deeplabv3plus_mobilenet_v2":
        return "v3plus"
    return None


def _single(r: dict[str, Any]) -> bool:
    return list(r.get("scales") or [1.0]) == [1.0] and not r.get("flip")


def _cell(rows: list[dict[str, Any]], model: str, *, backend: str = "torch-fp32", crf: str = "none",
          msc: bool = False, stride: int | None = None) -> dict[str, Any] | None:
    """The row of ``model`` (at output stride ``stride`` when given) with that backend, CRF and scale setting."""
    for r in rows:
        if r.get("model") == model and r["backend"] == backend and r.get("output", "logits") == "logits" and \
                r["crf"] == crf and _single(r) != msc and \
                (stride is None or r.get("output_stride") == stride):
            return r
    return None


def _diff(a: dict[str, Any] | None, b: dict[str, Any] | None) -> float | None:
    """mIoU points of ``a`` over ``b`` (None unless both cells exist)."""
    return None if a is None or b is None else 100 * (a["miou"] - b["miou"])


def seed_claims(doc: dict[str, Any], *, thin_class: str = "pole") -> dict[str, Any]:
    """Per model (by role): single-scale mIoU, the CRF's gain (the first CRF option beside none), MSC + flip's
    gain, the held-out INT8 change (ort-int8, qdq-int8), ``thin_class``'s IoU, latency; then the seed's
    comparisons between roles."""
    rows = doc["rows"]
    models = doc.get("models") or [doc["model"]]
    crfs = [c for c in dict.fromkeys(r["crf"] for r in rows) if c != "none"]
    crf = crfs[0] if crfs else None
    per: dict[str, dict[str, Any]] = {}
    for m in models:
        role = model_role(m)
        if role is None or role in per:
            continue
        name, os_ = m["name"], m.get("output_stride")  # each model at its first output stride in the result
        base = _cell(rows, name, stride=os_)
        if base is None:
            continue
        with_crf = _cell(rows, name, crf=crf, stride=os_) if crf else None
        msc = _cell(rows, name, msc=True, stride=os_)
        entry = {"model": name, "output_stride": os_, "what": ROLES[role], "arch": m.get("arch"), "aspp_rates": m.get("aspp_rates"),
                 "params_m": m["params"] / 1e6, "gflops": m.get("gflops"), "miou": base["miou"],
                 "latency_ms": base["latency_ms"], f"{thin_class}_iou": (base.get("class_iou") or {}).get(thin_class),
                 "crf": crf, "crf_gain_points": _diff(with_crf, base), "crf_params": (with_crf or {}).get("crf_params"),
                 "msc_flip_gain_points": _diff(msc, base), "msc_scales": (msc or {}).get("scales"),
                 "msc_latency_ms": (msc or {}).get("latency_ms")}
        for b in ("ort-int8", "qdq-int8"):
            entry[f"{b}_change_points"] = _diff(_cell(rows, name, backend=b, stride=os_), base)
        per[role] = entry

    def compare(a: str, b: str, says: str) -> dict[str, Any]:
        got = _diff(*(None if per.get(x) is None else _cell(rows, per[x]["model"], stride=per[x]["output_stride"])
                      for x in (a, b)))
        return {"a": a, "b": b, "change_points": got, "seed_says": says,
                "missing": [x for x in (a, b) if x not in per]}

    claims = {
        "aspp_l_over_largefov": compare("aspp_l", "largefov", "ASPP-L beats LargeFOV by about 1.5-2 points "
                                        "(VOC 2012 val, ResNet-101; as issue 28 quotes the seed)"),
        "rates_over_rateless": compare("v3_rates", "v3_rateless", "atrous rates 6/12/18 in ASPP help (DeepLab-v3, "
                                       "Chen et al. 2017)"),
        "decoder_over_v3_rates": compare("v3plus", "v3_rates", "the decoder refines boundaries and thin objects "
                                         "(DeepLab-v3+, Chen et al. 2018)"),
    }
    return {"data": doc.get("data"), "images": doc.get("images"), "split": doc.get("split"),
            "environment": doc.get("environment"), "models": per, "claims": claims}


def _pts(v: float | None) -> str:
    return "—" if v is None else f"{v:+.2f}"


def claims_markdown(c: dict[str, Any], thin_class: str = "pole") -> str:
    """The per-model table and the comparisons, as Markdown."""
    lines = [f"| model | params M | GFLOPs | mIoU | {thin_class} IoU | CRF gain | MSC+flip gain | ort-int8 | "
             "qdq-int8 | ms (torch-fp32) |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for e in c["models"].values():
        thin = e.get(f"{thin_class}_iou")
        lines.append(f"| {e['what']} | {e['params_m']:.2f} | {e['gflops']:.2f} | {100 * e['miou']:.2f}% | "
                     f"{'—' if thin is None else f'{100 * thin:.2f}%'} | {_pts(e['crf_gain_points'])} | "
                     f"{_pts(e['msc_flip_gain_points'])} | {_pts(e['ort-int8_change_points'])} | "
                     f"{_pts(e['qdq-int8_change_points'])} | {e['latency_ms']:.0f} |")
    lines.append("")
    for k, v in c["claims"].items():
        got = "not measured (missing: " + ", ".join(v["missing"]) + ")" if v["change_points"] is None else \
            f"{v['change_points']:+.2f} points"
        lines.append(f"* {k.replace('_', ' ')}: {got}; the seed: {v['seed_says']}")
    return "\n".join(lines) + "\n"
