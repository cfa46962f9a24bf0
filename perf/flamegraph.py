#!/usr/bin/python3
# perf/flamegraph.py: a small flame graph renderer (Debian 12 packages no FlameGraph scripts).
# Reads `perf script` output (stdin or a file), folds each sample's call stack (root first),
# and writes an SVG: one rectangle per frame, width proportional to its samples, children
# stacked above their parent, names inside wide enough boxes, a <title> tooltip on every box
# (name, samples, share). Kernel frames are orange, user frames yellow-red, by a stable hash.
#
# Owns: nothing but its output. Pure stdlib; reads at most --max-lines lines.
#
# Usage: perf script -i perf.data | perf/flamegraph.py --title "wsed" > flame.svg
#        perf/flamegraph.py --folded-out stacks.folded perf.script > flame.svg
import argparse
import html
import re
import sys
import zlib

FRAME = re.compile(r"^\s*([0-9a-fA-F]+)\s+(.+?)(?:\s+\((.*)\))?\s*$")


def parse_perf_script(lines, include_comm=True):
    """Yields (stack root-first, weight) per sample of `perf script` output: a header line, then
    one frame per line (leaf first), then a blank line."""
    header, frames = None, []
    for line in lines:
        line = line.rstrip("\n")
        if line.startswith("#"):
            continue
        if not line.strip():
            if header is not None:
                yield finish(header, frames, include_comm)
            header, frames = None, []
            continue
        if header is None:
            header = line
            continue
        m = FRAME.match(line)
        if m:
            sym, dso = m.group(2), m.group(3) or ""
            frames.append(clean(sym, dso))
    if header is not None:
        yield finish(header, frames, include_comm)


def clean(sym, dso):
    sym = re.sub(r"\+0x[0-9a-f]+$", "", sym)
    if sym == "[unknown]":
        base = dso.rsplit("/", 1)[-1] if dso else "?"
        sym = base if base.startswith("[") else f"[{base}]"
    kernel = dso.startswith("[kernel") or dso.endswith(".ko") or "vmlinux" in dso
    return sym + ("_[k]" if kernel and not sym.endswith("_[k]") else "")


def finish(header, frames, include_comm):
    stack = list(reversed(frames))
    if include_comm:
        comm = header.split()[0] if header.split() else "?"
        stack.insert(0, comm)
    return stack, 1


def fold(samples):
    folded = {}
    for stack, weight in samples:
        if not stack:
            continue
        key = ";".join(stack)
        folded[key] = folded.get(key, 0) + weight
    return folded


class Node:
    __slots__ = ("name", "value", "children")

    def __init__(self, name):
        self.name, self.value, self.children = name, 0, {}


def build_tree(folded):
    root = Node("all")
    for key, count in folded.items():
        root.value += count
        node = root
        for name in key.split(";"):
            node = node.children.setdefault(name, Node(name))
            node.value += count
    return root


def depth_of(node):
    return 1 + max((depth_of(c) for c in node.children.values()), default=0)


def color(name):
    h = zlib.crc32(name.encode())
    if name.endswith("_[k]"):
        return f"rgb({220 + h % 30},{120 + (h >> 8) % 60},{30 + (h >> 16) % 30})"
    return f"rgb({225 + h % 30},{60 + (h >> 8) % 130},{40 + (h >> 16) % 40})"


def render(root, title, width=1200, frame_h=16, min_px=0.3):
    depth = depth_of(root)
    top = 50
    height = top + depth * frame_h + 30
    total = max(root.value, 1)
    scale = (width - 20) / total
    out = ['<?xml version="1.0" standalone="no"?>',
           f'<svg version="1.1" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           'xmlns="http://www.w3.org/2000/svg">',
           '<style>text{font-family:Verdana,sans-serif;font-size:11px;fill:#000}'
           'rect:hover{stroke:#000;stroke-width:0.5}</style>',
           f'<rect x="0" y="0" width="{width}" height="{height}" fill="#f8f8f0"/>',
           f'<text x="{width / 2}" y="24" text-anchor="middle" style="font-size:17px">{html.escape(title)}</text>',
           f'<text x="10" y="{height - 10}">{total:,} samples; width = share of samples; '
           'bottom = root, each box above its caller; hover for details</text>']

    def draw(node, x, level):
        w = node.value * scale
        if w < min_px:
            return
        y = height - 30 - (level + 1) * frame_h
        pct = 100.0 * node.value / total
        label = node.name
        tip = html.escape(f"{label} ({node.value:,} samples, {pct:.2f}%)")
        out.append(f'<g><title>{tip}</title><rect x="{x + 10:.2f}" y="{y}" width="{w:.2f}" '
                   f'height="{frame_h - 1}" fill="{"#bbb" if level == 0 else color(label)}" rx="2"/>')
        chars = int((w - 6) / 7)
        if chars >= 3:
            text = label if len(label) <= chars else label[:chars - 2] + ".."
            out.append(f'<text x="{x + 13:.2f}" y="{y + frame_h - 4}">{html.escape(text)}</text>')
        out.append("</g>")
        cx = x
        for child in sorted(node.children.values(), key=lambda c: c.name):
            draw(child, cx, level + 1)
            cx += child.value * scale

    draw(root, 0.0, 0)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description="perf script output -> flame graph SVG")
    ap.add_argument("input", nargs="?", help="perf script output (default stdin)")
    ap.add_argument("--title", default="Flame graph")
    ap.add_argument("--width", type=int, default=1200)
    ap.add_argument("--no-comm", action="store_true", help="do not put the command name at the root")
    ap.add_argument("--folded-out", help="also write the folded stacks (stack;frames count) here")
    ap.add_argument("--max-lines", type=int, default=50_000_000)
    args = ap.parse_args()
    src = open(args.input, errors="replace") if args.input else sys.stdin

    def bounded(f):
        for i, line in enumerate(f):
            if i >= args.max_lines:
                break
            yield line

    folded = fold(parse_perf_script(bounded(src), not args.no_comm))
    if args.input:
        src.close()
    if args.folded_out:
        with open(args.folded_out, "w") as f:
            for key in sorted(folded):
                f.write(f"{key} {folded[key]}\n")
    if not folded:
        print("flamegraph: no samples in the input", file=sys.stderr)
        return 1
    sys.stdout.write(render(build_tree(folded), args.title, args.width))
    return 0


if __name__ == "__main__":
    sys.exit(main())
