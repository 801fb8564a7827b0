"""`captioner export`: a trained captioner as ONNX, for captioner.runtime (ONNX Runtime, no torch).

The folder holds two graphs and what the search needs besides them:
- encoder.onnx: pictures (B, 3, S, S) -> everything computed once per picture: the memory (B, P, D) the decoder
  attends over, its attention keys (B, P, A), the first state (h, and c for an LSTM: (B, L, H) each), and with
  class words the classes' log-probabilities over the whole picture (B, C) and the classifier's top class;
- step.onnx: one decoder step, the previous words (N,), the state (N rows), and the memory and keys of the
  picture of each row (N rows: a picture's K hypotheses in beam search each read a copy) -> word
  log-probabilities (N, V), the new state, attention (N, P);
- vocab.json, the decode settings and the sentence rules' word tables (rules.npz), and manifest.json.
Beam search, greedy decoding and the rules stay in captioner.decoding, which runs on NumPy arrays as on tensors.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from captioner.class_words import class_list
from captioner.errors import ConfigError
from captioner.files import atomic_path, write_json
from captioner.models.captioner import Captioner

FORMAT = 1  # manifest.json's "format": what captioner.runtime reads
OPSET = 18


class EncoderGraph(nn.Module):
    """Pictures -> the per-picture inputs of every decoding step (see the module's docstring)."""

    def __init__(self, model: Captioner):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        model, decoder = self.model, self.model.decoder
        grids = model.encoder.grid(images)  # the backbone once, for the caption and the classifier alike
        memory = model.encoder(grids)
        attended = decoder.prepare(memory, None, class_offset=model.class_offset)
        outputs = (memory, attended.keys, *decoder.init_state(memory))
        if model.classes is None:
            return outputs
        top = decoder.class_logits(grids.mean(1)).softmax(-1).max(-1)
        return (*outputs, attended.whole_classes, top.values, top.indices)


class StepGraph(nn.Module):
    """One free-running decoder step, as AttentionDecoder.step, with the word distribution as log-probabilities."""

    def __init__(self, model: Captioner):
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor, *inputs: Tensor) -> tuple[Tensor, ...]:
        decoder = self.model.decoder
        states = decoder.core.num_states
        state, (memory, keys, *whole) = tuple(inputs[:states]), inputs[states:]
        class_offset = self.model.class_offset if whole else None
        attended = decoder.attended(memory, keys, None, whole[0] if whole else None, class_offset, decoding=True)
        scores, state, alpha = decoder.step(tokens, state, attended)
        return (torch.log_softmax(scores.float(), dim=-1), *state, alpha)


def names(model: Captioner) -> dict[str, list[str]]:
    """The graphs' input and output names, which captioner.runtime reads from the manifest."""
    states = ["h", "c"][: model.decoder.core.num_states]
    classes = model.classes is not None
    encoder_out = ["memory", "keys", *states] + (["whole_classes", "top_probability", "top_class"] if classes else [])
    step_in = ["tokens", *states, "memory", "keys"] + (["whole_classes"] if classes else [])
    step_out = ["log_probs", *[f"next_{s}" for s in states], "attention"]
    return {"encoder_in": ["images"], "encoder_out": encoder_out, "step_in": step_in, "step_out": step_out}


def export(
    model: Captioner, config, vocab, out: str | Path, image_size: int, mean, std, checkpoint: str = "", log=print
) -> Path:
    """Write the ONNX folder of a captioner (in eval mode, on the CPU, float32) into out."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: a file, not a folder to write the export into")
    out.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).float().cpu().eval()  # the caller's model stays as it is
    graph_names = names(model)
    pictures = torch.rand(2, 3, image_size, image_size)
    encoder_graph, step_graph = EncoderGraph(model).eval(), StepGraph(model).eval()
    with torch.no_grad():
        encoded = encoder_graph(pictures)
        beam = 3
        states = [s.repeat_interleave(beam, 0) for s in encoded[2 : 2 + model.decoder.core.num_states]]
        tokens = torch.full((2 * beam,), vocab.bos_id, dtype=torch.long)
        constants = [encoded[0], encoded[1]] + ([encoded[-3]] if model.classes else [])
        # one row of each per hypothesis: a graph whose rows share pictures would tie its two batch sizes
        constants = [c.repeat_interleave(beam, 0) for c in constants]
        step_inputs = (tokens, *states, *constants)
    pictures_dim, rows_dim = torch.export.Dim("pictures"), torch.export.Dim("rows")
    log(f"exporting {checkpoint or 'the model'}: the encoder, then one decoder step (some seconds each)")
    _export(encoder_graph, (pictures,), out / "encoder.onnx", graph_names, "encoder", {"images": {0: pictures_dim}})
    # the step's arguments: tokens, then *inputs (the state, the pictures' constants), a row per hypothesis each
    step_dims = ({0: rows_dim}, tuple([{0: rows_dim}] * (len(states) + len(constants))))
    _export(step_graph, step_inputs, out / "step.onnx", graph_names, "step", step_dims)
    _write_tables(model, out / "rules.npz")
    vocab.save(out / "vocab.json")
    manifest = {
        "format": FORMAT,
        "kind": "captioner",
        "checkpoint": checkpoint,
        "image_size": image_size,
        "mean": list(mean),
        "std": list(std),
        "grid_size": config.encoder.grid_size,
        "classes": model.classes,
        "class_names": class_list(model.classes) if model.classes else None,  # the runtime has no torchvision
        "decode": dataclasses.asdict(config.decode),
        "names": graph_names,
        "opset": OPSET,
    }
    write_json(out / "manifest.json", manifest)
    log(f"exported {checkpoint or 'the model'} to {out}: encoder.onnx, step.onnx, vocab.json, rules.npz")
    return out


def _export(module: nn.Module, inputs: tuple, path: Path, graph_names: dict, graph: str, dims) -> None:
    """One graph into path (atomically), its batch dimensions dynamic."""
    with atomic_path(path) as tmp, warnings.catch_warnings():
        # every input of the step shares the one dynamic dimension, rows: the exporter says so, needlessly
        warnings.filterwarnings("ignore", message="# The axis name")
        try:
            torch.onnx.export(
                module,
                inputs,
                str(tmp),
                input_names=graph_names[f"{graph}_in"],
                output_names=graph_names[f"{graph}_out"],
                dynamic_shapes=dims,
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
        except ImportError as error:
            raise ConfigError(
                f"exporting to ONNX needs onnx and onnxscript: pip install 'captioner[export]' ({error})"
            ) from None


def _write_tables(model: Captioner, path: Path) -> None:
    """The decoder's word tables that the sentence rules read (Captioner.decoding): end shares, and with class
    words which word each counts as, the class-word slots and the words that may lead to one."""
    decoder = model.decoder
    tables = {"end_share": decoder.end_share}
    optional = {
        "same_word": decoder.same_word,
        "class_group": decoder.class_group,
        "class_lead": decoder.class_lead,
        "class_lead_start": decoder.class_lead_start,
    }
    tables |= {name: value for name, value in optional.items() if value is not None}
    arrays = {name: np.asarray(value.detach().cpu().numpy()) for name, value in tables.items()}
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        np.savez(file, **arrays)


def export_checkpoint(checkpoint: str | Path | None, out: str | Path, log=print) -> Path:
    """`captioner export`: the captioner of a checkpoint (None: the default model) into an ONNX folder."""
    from captioner.checkpoint import default_checkpoint
    from captioner.config import Config
    from captioner.models.registry import restore

    path = default_checkpoint(checkpoint)
    model, config, vocabularies = restore(path, torch.device("cpu"), kind=Config.KIND)
    encoder = model.encoder
    return export(
        model, config, vocabularies["vocab"], out, config.data.image_size, encoder.mean, encoder.std, str(path), log
    )
