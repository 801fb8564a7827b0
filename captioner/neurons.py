"""Looking inside a trained char LM, neuron by neuron: which hidden units ("cells", as Karpathy et al. 2015
call them) track simple properties of a text (inside quotes, inside brackets, position in line,
indentation), and an HTML page colouring a text by one of them. `captioner lm cells` runs it.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import torch

from captioner.device import resolve_device
from captioner.errors import DataError
from captioner.files import write_text
from captioner.models.char_lm import CharLM
from captioner.models.registry import restore
from captioner.text import TEXT_PROPERTIES
from captioner.vocab import Vocab

PROPERTIES = TEXT_PROPERTIES


def text_properties(text: str) -> dict[str, np.ndarray]:
    """Per character: inside "..." or '...' quotes (0/1), bracket depth > 0 (0/1), column, line indentation."""
    quotes = np.zeros(len(text))
    brackets = np.zeros(len(text))
    column = np.zeros(len(text))
    indent = np.zeros(len(text))
    open_quote, depth, col, line_indent, at_start = None, 0, 0, 0, True
    for i, char in enumerate(text):
        if open_quote is None and char in "\"'":
            open_quote = char
        elif char == open_quote:
            open_quote = None
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth = max(0, depth - 1)
        quotes[i] = open_quote is not None or char in "\"'"
        brackets[i] = depth > 0 or char in ")]}"
        column[i] = col
        if at_start and char == " ":
            line_indent += 1
        elif char != "\n":
            at_start = False
        indent[i] = line_indent
        if char == "\n":
            col, line_indent, at_start, open_quote = 0, 0, True, None
        else:
            col += 1
    return {
        "inside quotes": quotes,
        "inside brackets": brackets,
        "position in line": column,
        "indentation depth": indent,
    }


@torch.no_grad()
def hidden_activations(model: CharLM, vocab: Vocab, text: str) -> np.ndarray:
    """The top layer's hidden state after each character: (len(text), H), from one fused pass."""
    device = next(model.parameters()).device
    ids = torch.tensor([vocab.encode(list(text))], device=device)
    outputs, _ = model.core(model.embedding(ids))
    return outputs[0].float().cpu().numpy()


def correlations(activations: np.ndarray, properties: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Pearson correlation of every cell (column) with every property: {property: (H,)}."""
    a = activations - activations.mean(0)
    a_norm = np.sqrt((a * a).sum(0)) + 1e-12
    result = {}
    for name, values in properties.items():
        v = values - values.mean()
        result[name] = (a * v[:, None]).sum(0) / (a_norm * (np.sqrt((v * v).sum()) + 1e-12))
    return result


def cell_html(text: str, activation: np.ndarray, title: str) -> str:
    """The text with each character's background coloured by one cell's activation (blue -1 .. red +1)."""
    spans = []
    for char, value in zip(text, np.clip(activation, -1, 1), strict=True):
        colour = f"rgba(220,40,40,{value:.2f})" if value > 0 else f"rgba(40,90,220,{-value:.2f})"
        shown = "&#8629;<br>" if char == "\n" else html.escape(char).replace(" ", "&nbsp;")
        spans.append(f'<span style="background:{colour}" title="{value:+.2f}">{shown}</span>')
    return (
        f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>"
        f"<h3>{html.escape(title)}</h3><div style='font-family:monospace;line-height:1.5'>{''.join(spans)}</div>\n"
    )


def inspect_cells(
    checkpoint: str | Path,
    text_file: str | Path,
    max_chars: int = 20_000,
    html_path: str | Path | None = None,
    cell: int | None = None,
    prop: str = "inside quotes",
    device: str = "auto",
) -> dict:
    """Correlate every top-layer cell with each property over a text file's first max_chars characters.

    Returns {"chars", "correlations": {property: (H,) array}, "ranked": {property: cells, strongest first}};
    with html_path, also writes the text coloured by `cell` (default: the strongest for `prop`).
    """
    model, _, vocabularies = restore(checkpoint, resolve_device(device), kind="char_lm")
    vocab = vocabularies["vocab"]
    path = Path(text_file)
    try:
        text = path.read_text(encoding="utf-8")[:max_chars]
    except FileNotFoundError:
        raise DataError(f"text file {path} does not exist") from None
    except UnicodeDecodeError as error:
        raise DataError(f"text file {path} is not UTF-8 text: {error}") from None
    activations = hidden_activations(model, vocab, text)
    table = correlations(activations, text_properties(text))
    ranked = {name: [int(i) for i in np.argsort(-np.abs(values))] for name, values in table.items()}
    report = {"chars": len(text), "correlations": table, "ranked": ranked}
    if html_path:
        cell = cell if cell is not None else ranked[prop][0]
        if not 0 <= cell < activations.shape[1]:
            raise DataError(f"--cell {cell} is out of range: the model has {activations.shape[1]} cells")
        title = f"cell {cell} of {checkpoint} on {path.name}"
        write_text(html_path, cell_html(text, activations[:, cell], title))
        report["html_cell"] = cell
    return report
