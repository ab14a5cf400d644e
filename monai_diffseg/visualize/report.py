# Copyright (c) monai-diffseg contributors
# Licensed under the Apache License, Version 2.0
"""A self-contained HTML review page of an evaluation run (``report.html``), built from what the run wrote.

:func:`write_report` reads ``metrics.json`` (:class:`monai_diffseg.handlers.CaseMetricsWriter`) and the maps the
bundles save per case (:class:`monai_diffseg.transforms.SaveMapsd`: ``<case>_prob.png``, ``<case>_variance.png`` ...;
:class:`monai_diffseg.visualize.SaveOverlayd`: ``<case>_overlay.png``; 3D NIfTI volumes ``<case>_seg.nii.gz`` ...)
and writes one page with every image inlined as a base64 PNG thumbnail, so the file opens from disk, can be mailed
and needs no server. The run summary is at the top, then one row per case (image, overlay, probability,
uncertainty, scores) sorted by uncertainty, most uncertain first: the cases a reviewer should look at.

Command line (after a run): ``python -m monai_diffseg.visualize.report <output_dir> [--image-dir <dataset_dir>]``.
"""

from __future__ import annotations

import argparse
import base64
import bisect
import functools
import html
import io
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import PathLike
from monai.utils import look_up_option, optional_import
from PIL import Image

from monai_diffseg.transforms.io import PILModeConverter
from monai_diffseg.utils import atomic_write

from .overlay import overlay_mask

nib, has_nib = optional_import("nibabel")
colormaps, has_matplotlib = optional_import("matplotlib", name="colormaps")

__all__ = ["UNCERTAINTY_MAPS", "case_sources", "main", "write_report"]

logger = logging.getLogger(__name__)

#: uncertainty maps shown (the first one a case has), in order of preference
UNCERTAINTY_MAPS: tuple[str, ...] = ("variance", "entropy", "mutual_information")
_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".nii.gz", ".nii")
_VOLUME_EXTS = (".nii.gz", ".nii")


def _split_ext(name: str) -> tuple[str, str]:
    """``"a_seg.nii.gz" -> ("a_seg", ".nii.gz")``; other names as :func:`os.path.splitext`."""
    for ext in _VOLUME_EXTS:
        if name.lower().endswith(ext):
            return name[: -len(ext)], name[-len(ext) :]
    return os.path.splitext(name)


def _stem(path: str) -> str:
    return _split_ext(os.path.basename(path))[0]


def case_sources(datalist: Sequence[Mapping[str, Any]] | None, key: str = "image") -> dict[str, str]:
    """``{case id: source file}`` of a bundle data list, with the case id :class:`CaseMetricsWriter` gives a case:
    the item's ``"case"`` string, else the stem of its ``key`` file. Items whose ``key`` is a list (BraTS: the
    four modalities t1, t1ce, t2, flair) give the last file (FLAIR for BraTS); items without ``key`` are left out."""
    sources: dict[str, str] = {}
    for item in datalist or []:
        src = item.get(key) if isinstance(item, Mapping) else None
        if isinstance(src, (list, tuple)):
            src = src[-1] if src else None
        if not isinstance(src, (str, os.PathLike)):
            continue
        src = os.fspath(src)
        case = item.get("case")
        sources[case if isinstance(case, str) else _stem(src)] = src
    return sources


def _index_files(root: str, skip: set[str]) -> dict[str, list[str]]:
    """``{basename: [paths]}`` of the files below ``root`` (hidden files and ``skip`` paths left out)."""
    index: dict[str, list[str]] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = os.path.join(folder, name)
            if not name.startswith(".") and os.path.abspath(path) not in skip:
                index.setdefault(name, []).append(path)
    return index


def _search_sources(image_dir: str, cases: Sequence[str]) -> dict[str, str]:
    """Source images of ``cases`` under ``image_dir``: a file named ``<case>.<image ext>``, else a folder named
    ``<case>`` holding ``image.*``, a ``*flair*`` volume or (first in name order) any image."""
    wanted = set(cases)
    found: dict[str, str] = {}
    for folder, dirs, files in os.walk(image_dir):
        dirs.sort()
        images = sorted(f for f in files if f.lower().endswith(_IMAGE_EXTS) and not f.startswith("."))
        for name in images:
            stem = _stem(name)
            if stem in wanted and stem not in found:
                found[stem] = os.path.join(folder, name)
        base = os.path.basename(folder)
        if base in wanted and base not in found and images:
            pick = [f for f in images if _stem(f).lower() == "image"] or [f for f in images if "flair" in f.lower()]
            found[base] = os.path.join(folder, (pick or images)[0])
    return found


class _CaseFiles:
    """Finds the maps of one case in the output folder index: ``<stem>_<postfix><ext>`` or, for maps written per
    channel, ``<stem>_<channel>_<postfix><ext>``; where several folders hold the name (``data_root_dir`` layouts,
    e.g. ``<case>/image_prob.png``), the one whose path ends like the source's folder."""

    def __init__(self, index: dict[str, list[str]], names: list[str], output_dir: str, other_stems: set[str]) -> None:
        self.index = index
        self.names = names  # sorted keys of ``index``: the names of one stem are a contiguous range
        self.output_dir = output_dir
        self.other_stems = other_stems

    def _pick(self, paths: list[str], source: str | None) -> str | None:
        if len(paths) == 1:
            return paths[0]
        if source is None:
            return None
        src_parts = os.path.normpath(os.path.dirname(os.path.abspath(source))).split(os.sep)
        best, best_len = None, -1
        for p in paths:
            rel = os.path.relpath(os.path.dirname(p), self.output_dir)
            parts = [] if rel == "." else rel.split(os.sep)
            if parts == src_parts[len(src_parts) - len(parts) :] and len(parts) > best_len:
                best, best_len = p, len(parts)
        return best

    def find(self, stems: Sequence[str], postfix: str, source: str | None) -> list[tuple[str, str]]:
        """``[(channel name or "", path)]`` of the ``postfix`` map of a case known by ``stems``."""
        for stem in stems:
            for ext in (".png", *_VOLUME_EXTS, ".jpg"):
                paths = self.index.get(f"{stem}_{postfix}{ext}")
                path = self._pick(paths, source) if paths else None
                if path:
                    return [("", path)]
            per_channel = []
            for name in self.names[bisect.bisect_left(self.names, f"{stem}_") :]:
                if not name.startswith(f"{stem}_"):
                    break
                paths = self.index[name]
                base, ext = _split_ext(name)
                if not base.startswith(f"{stem}_") or not base.endswith(f"_{postfix}"):
                    continue
                channel = base[len(stem) + 1 : -len(postfix) - 1]
                if channel and f"{stem}_{channel}" not in self.other_stems:
                    path = self._pick(paths, source)
                    if path:
                        per_channel.append((channel, path))
            if per_channel:
                return sorted(per_channel)
        return []


def _thumbnail(array: np.ndarray, size: int, fmt: str = "png") -> tuple[str, int, int]:
    """uint8 (H, W) or (H, W, 3) array -> (data URI, display width, display height): a PNG (or JPEG) whose longer side
    is at most ``size`` pixels, displayed with the longer side ``size`` (small images are enlarged by the browser)."""
    img = Image.fromarray(np.ascontiguousarray(array))
    img.thumbnail((size, size), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    if fmt == "jpeg":
        img.save(buf, format="JPEG", quality=85)
    else:
        img.save(buf, format="PNG")
    scale = size / max(img.size)
    uri = f"data:image/{fmt};base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return uri, round(img.size[0] * scale), round(img.size[1] * scale)


def _to_uint8(x: np.ndarray, low: float | None = None, high: float | None = None) -> np.ndarray:
    """Scale to 0-255 between ``low`` and ``high`` (default the 1st/99th percentiles)."""
    x = np.asarray(x, dtype=np.float64)
    if low is None or high is None:
        low, high = (float(v) for v in np.percentile(x, [1, 99])) if x.size else (0.0, 1.0)
    scaled = (x - low) / (high - low) if high > low else np.zeros_like(x)
    return np.round(np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def _heat(gray: np.ndarray) -> np.ndarray:
    """uint8 (H, W) -> (H, W, 3) with matplotlib's ``magma`` colour map when installed, else grey."""
    if gray.ndim != 2 or not has_matplotlib:
        return gray
    return (colormaps["magma"](gray)[..., :3] * 255).round().astype(np.uint8)


class _Volume:
    """A 3D case: one axial slice of every volume, the one with the most predicted foreground inside the image's
    non-zero region (the head, when the source image is given; a prediction outside it is not what to review), else
    the one with the most predicted foreground, else the middle one."""

    def __init__(self, seg_path: str | None, image_path: str | None = None) -> None:
        self.z: int | None = None
        if seg_path is not None:
            seg = np.asarray(nib.load(seg_path).dataobj)
            fg = (seg.reshape(*seg.shape[:3], -1) > 0).any(-1)
            area = fg.sum(axis=(0, 1))
            if image_path is not None and image_path.lower().endswith(_VOLUME_EXTS):
                image = np.asarray(nib.load(image_path).dataobj)
                if image.shape[:3] == fg.shape:
                    inside = (fg & (image.reshape(*image.shape[:3], -1) != 0).any(-1)).sum(axis=(0, 1))
                    area = inside if inside.max() > 0 else area
            self.z = int(area.argmax()) if area.max() > 0 else seg.shape[2] // 2

    def slice(self, path: str) -> np.ndarray:
        """(H, W) display slice (rows = anterior to posterior in RAS volumes); channels (4th dim) by their maximum."""
        vol = np.asarray(nib.load(path).dataobj, dtype=np.float32)
        if vol.ndim == 5:  # (X, Y, Z, 1, C) as SaveImage writes channels
            vol = vol[:, :, :, 0]
        z = self.z if self.z is not None and self.z < vol.shape[2] else vol.shape[2] // 2
        plane = vol[:, :, z]
        plane = plane.max(-1) if plane.ndim == 3 else plane
        return np.ascontiguousarray(np.rot90(plane))


def _read_image(path: str, volume: _Volume | None, to_rgb: PILModeConverter) -> np.ndarray:
    if path.lower().endswith(_VOLUME_EXTS):
        return _to_uint8((volume or _Volume(None)).slice(path))
    with Image.open(path) as pil:
        return np.asarray(to_rgb(pil))


def _read_map(path: str, volume: _Volume | None, heat: bool) -> np.ndarray:
    """A saved map as uint8 (H, W[, 3]): PNGs as stored (SaveMapsd scaled them already), volumes 0-1 -> 0-255."""
    if path.lower().endswith(_VOLUME_EXTS):
        plane = (volume or _Volume(None)).slice(path)
        gray = _to_uint8(plane, 0.0, max(1.0, float(plane.max())) if heat else 1.0)
    else:
        with Image.open(path) as pil:
            arr = np.asarray(pil)
        gray = arr if arr.ndim == 2 else arr[..., 0]
    return _heat(gray) if heat else gray


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return html.escape(str(v))


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:16px;color:#222;background:#fff}
h1{font-size:20px;margin:0 0 8px} h2{font-size:16px;margin:16px 0 6px}
table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:4px 6px;vertical-align:top;font-size:13px}
th{background:#f0f0f0;text-align:left} #summary td:nth-child(2){text-align:right;font-variant-numeric:tabular-nums}
#cases img{display:block;image-rendering:pixelated} figure{margin:0 0 4px} figcaption{font-size:11px;color:#555}
.scores td{border:none;padding:0 4px} .primary{font-weight:bold} .missing{color:#999}
.note{color:#555;font-size:12px}
"""


def _cell(images: list[tuple[str, tuple[str, int, int]]]) -> str:
    if not images:
        return '<td class="missing">&mdash;</td>'
    figs = []
    for caption, (uri, width, height) in images:
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        alt = html.escape(caption or "map")
        figs.append(f'<figure><img src="{uri}" width="{width}" height="{height}" alt="{alt}">{cap}</figure>')
    return "<td>" + "".join(figs) + "</td>"


def write_report(
    output_dir: PathLike,
    metrics_file: str = "metrics.json",
    report_file: str = "report.html",
    sources: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    image_dir: PathLike | None = None,
    sort_by: str = "sample_diversity",
    primary: str = "dice",
    thumb_size: int = 160,
    thumb_format: str = "png",
    max_cases: int | None = None,
    title: str | None = None,
) -> str:
    """
    Write ``report.html`` into ``output_dir`` from the run's ``metrics.json`` and saved maps (module docstring).

    Each case row shows: the source image (from ``sources``, or found under ``image_dir``), the overlay
    (``<case>_overlay.png``, or ``<case>_<channel>_overlay.png`` per channel; for 3D cases drawn here from the label
    map ``<case>_seg.nii.gz`` and the ground truth in ``labels``), the probability map (``prob``), the first
    uncertainty map present (:data:`UNCERTAINTY_MAPS`, as a heat map when matplotlib is installed) and the case's
    scores (``primary`` in bold; ``null`` scores, e.g. Dice without a label, are left out). 3D volumes (NIfTI) show
    the axial slice with the most predicted foreground (the middle one when empty). Rows are sorted by the score
    ``sort_by`` (highest first; cases without it last); when no case has it, by the mean of the uncertainty map.

    Args:
        output_dir: the run's output folder (holds ``metrics_file`` and the maps; the report is written there).
        metrics_file: per-case scores written by :class:`monai_diffseg.handlers.CaseMetricsWriter` (for sharded
            runs: the merged file), relative to ``output_dir`` or absolute.
        report_file: output file name, relative to ``output_dir`` or absolute.
        sources: ``{case id: source image file}`` (:func:`case_sources` of the bundle's data list).
        labels: ``{case id: ground-truth file}``, used for 3D overlays (2D overlays already carry the label).
        image_dir: folder searched for source images of cases missing from ``sources`` (``<case>.<ext>``, or a
            folder ``<case>/`` with ``image.*`` or a FLAIR volume).
        sort_by: per-case score to sort by, most uncertain first (``sample_diversity``: mean ``1 - IoU`` between
            ensemble members).
        primary: score shown first and in bold (``dice``).
        thumb_size: longest side of the inlined thumbnails in pixels (smaller images are shown enlarged).
        thumb_format: ``"png"`` (lossless: contours stay crisp) or ``"jpeg"`` (about 6x smaller pages for runs of
            thousands of cases; measured on 609 Kvasir-SEG cases at 160 px: PNG 38 KB, JPEG 6 KB per photo).
        max_cases: only the ``max_cases`` most uncertain cases (``None``: all); the summary says how many are shown.
        title: page title; default the output folder's name.

    Returns:
        Absolute path of the written report.

    Raises:
        FileNotFoundError: ``metrics_file`` does not exist (run the evaluation with a ``CaseMetricsWriter`` first).
        ValueError: ``metrics_file`` has no ``"cases"`` list, or ``thumb_size`` < 16.
    """
    output_dir = os.path.abspath(os.fspath(output_dir))
    metrics_path = os.path.join(output_dir, metrics_file)
    report_path = os.path.abspath(os.path.join(output_dir, report_file))
    if not os.path.isfile(metrics_path):
        raise FileNotFoundError(
            f"write_report: '{metrics_path}' not found; run the bundle's evaluate (or inference) config first, whose "
            "CaseMetricsWriter writes it, or pass metrics_file."
        )
    thumb_format = look_up_option(thumb_format, ("png", "jpeg"))
    thumb = functools.partial(_thumbnail, size=int(thumb_size), fmt=thumb_format)
    if int(thumb_size) < 16:
        raise ValueError(f"write_report: thumb_size must be >= 16 pixels, got {thumb_size}.")
    with open(metrics_path) as f:
        metrics = json.load(f)
    cases = metrics.get("cases") if isinstance(metrics, Mapping) else None
    if not isinstance(cases, list):
        raise ValueError(f"write_report: '{metrics_path}' has no 'cases' list; is it a CaseMetricsWriter file?")
    sources = dict(sources or {})
    labels = dict(labels or {})
    missing = [c["case"] for c in cases if c.get("case") not in sources]
    if image_dir and missing and os.path.isdir(os.fspath(image_dir)):
        sources.update(_search_sources(os.fspath(image_dir), missing))

    index = _index_files(output_dir, {report_path, os.path.abspath(metrics_path)})
    names = sorted(index)
    all_stems = {str(c.get("case")) for c in cases} | {_stem(s) for s in sources.values()}
    to_rgb = PILModeConverter("RGB")
    rows = []
    for record in cases:
        case = str(record.get("case"))
        source = sources.get(case)
        stems = list(dict.fromkeys([*([_stem(source)] if source else []), case]))
        files = _CaseFiles(index, names, output_dir, all_stems)
        seg = files.find(stems, "seg", source) or files.find(stems, "mask", source)
        is_3d = any(p.lower().endswith(_VOLUME_EXTS) for _, p in seg) or bool(
            source and source.lower().endswith(_VOLUME_EXTS)
        )
        if is_3d and not has_nib:
            raise RuntimeError("write_report: 3D (NIfTI) outputs need nibabel: pip install nibabel.")
        volume = (
            _Volume(seg[0][1] if seg else None, source if source and os.path.isfile(source) else None)
            if is_3d
            else None
        )
        row: dict[str, Any] = {"record": record, "image": [], "overlay": [], "prob": [], "uncertainty": []}
        image = None
        if source and os.path.isfile(source):
            try:
                image = _read_image(source, volume, to_rgb)
                row["image"] = [("", thumb(image))]
            except Exception as err:  # a report is best effort: an unreadable source leaves its cell empty
                logger.warning(f"report: case '{case}': cannot read source image '{source}': {err}")
        overlays = files.find(stems, "overlay", source)
        if overlays:
            row["overlay"] = [(ch, thumb(_read_image(p, volume, to_rgb))) for ch, p in overlays]
        elif is_3d and seg and image is not None:
            mask = volume.slice(seg[0][1]) > 0
            label = labels.get(case)
            gt = volume.slice(label) > 0 if label and os.path.isfile(label) else None
            if gt is not None and gt.shape != mask.shape:
                gt = None
            if mask.shape == image.shape[:2]:
                row["overlay"] = [("", thumb(overlay_mask(image, mask, label=gt)))]
        probs = files.find(stems, "prob", source)
        row["prob"] = [(ch, thumb(_read_map(p, volume, heat=False))) for ch, p in probs]
        mean_unc = None
        for name in UNCERTAINTY_MAPS:
            maps = files.find(stems, name, source)
            if maps:
                arrays = [(ch, _read_map(p, volume, heat=False)) for ch, p in maps]
                mean_unc = float(np.mean([a.mean() for _, a in arrays])) / 255.0
                row["uncertainty"] = [(f"{name} {ch}".strip(), thumb(_heat(a))) for ch, a in arrays]
                break
        row["mean_uncertainty"] = mean_unc
        rows.append(row)

    by_score = any(r["record"].get(sort_by) is not None for r in rows)
    key_name = sort_by if by_score else "mean uncertainty map"

    def sort_key(r: dict[str, Any]) -> tuple[int, float, str]:
        v = r["record"].get(sort_by) if by_score else r["mean_uncertainty"]
        return (v is None, -(v or 0.0), str(r["record"].get("case")))

    rows.sort(key=sort_key)
    shown = rows if max_cases is None else rows[: int(max_cases)]
    html_text = _render(metrics, shown, len(rows), key_name, primary, title or os.path.basename(output_dir))
    with atomic_write(report_path) as f:
        f.write(html_text)
    logger.info(f"review report of {len(shown)} case(s) -> {report_path}")
    return report_path


def _render(
    metrics: Mapping[str, Any], rows: list[dict[str, Any]], total: int, sort_name: str, primary: str, title: str
) -> str:
    summary = [(k, v) for k, v in metrics.items() if k not in ("cases", "failed", "engine_metrics") and v is not None]
    summary += [(f"engine: {k}", v) for k, v in (metrics.get("engine_metrics") or {}).items() if v is not None]
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}: review report</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}: review report</h1>",
        '<h2>Run summary</h2><table id="summary"><tbody>',
        *(f"<tr><th>{html.escape(str(k))}</th><td>{_fmt(v)}</td></tr>" for k, v in summary),
        "</tbody></table>",
    ]
    failed = metrics.get("failed") or []
    if failed:
        out.append(f'<h2>Cases that could not be read ({len(failed)})</h2><ul id="failed">')
        out += [f"<li>{html.escape(str(c.get('case')))}: {html.escape(str(c.get('reason')))}</li>" for c in failed]
        out.append("</ul>")
    out += [
        f"<h2>Cases ({len(rows)} of {total}), sorted by {html.escape(sort_name)}, most uncertain first</h2>",
        '<p class="note">Overlay: prediction in red (fill and contour), ground truth as a green contour. '
        "Probability and uncertainty maps as the run saved them (3D: the axial slice with the most predicted "
        "foreground).</p>",
        '<table id="cases"><thead><tr><th>#</th><th>case</th><th>image</th><th>overlay</th><th>probability</th>'
        "<th>uncertainty</th><th>scores</th></tr></thead><tbody>",
    ]
    for i, row in enumerate(rows, 1):
        record = row["record"]
        scores = [(k, v) for k, v in record.items() if k != "case" and v is not None]
        scores.sort(key=lambda kv: kv[0] != primary)
        score_rows = "".join(
            f'<tr class="{"primary" if k == primary else ""}"><td>{html.escape(k)}</td><td>{_fmt(v)}</td></tr>'
            for k, v in scores
        )
        out.append(
            f'<tr class="case" id="case-{html.escape(str(record.get("case")))}"><td>{i}</td>'
            f"<td>{html.escape(str(record.get('case')))}</td>"
            + "".join(_cell(row[k]) for k in ("image", "overlay", "prob", "uncertainty"))
            + f'<td><table class="scores">{score_rows}</table></td></tr>'
        )
    out += ["</tbody></table>", "</body></html>", ""]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> str:
    """Command line: ``python -m monai_diffseg.visualize.report <output_dir> [options]``; prints the report path."""
    parser = argparse.ArgumentParser(
        prog="python -m monai_diffseg.visualize.report",
        description="Write report.html (a self-contained review page) into an evaluation output folder.",
    )
    parser.add_argument("output_dir", help="the run's output folder, holding metrics.json and the saved maps")
    parser.add_argument("--image-dir", default=None, help="folder searched for the source images (the dataset)")
    parser.add_argument("--metrics-file", default="metrics.json")
    parser.add_argument("--report-file", default="report.html")
    parser.add_argument("--sort-by", default="sample_diversity", help="per-case score, most uncertain first")
    parser.add_argument("--primary", default="dice", help="score shown first and in bold")
    parser.add_argument("--thumb-size", type=int, default=160, help="longest side of the thumbnails in pixels")
    parser.add_argument("--thumb-format", default="png", choices=["png", "jpeg"], help="jpeg: smaller pages")
    parser.add_argument("--max-cases", type=int, default=None)
    args = parser.parse_args(argv)
    path = write_report(
        args.output_dir,
        metrics_file=args.metrics_file,
        report_file=args.report_file,
        image_dir=args.image_dir,
        sort_by=args.sort_by,
        primary=args.primary,
        thumb_size=args.thumb_size,
        thumb_format=args.thumb_format,
        max_cases=args.max_cases,
    )
    print(path)
    return path


if __name__ == "__main__":
    main()
