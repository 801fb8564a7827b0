"""captioner: Show, Attend and Tell image captioning, a char-level LM and a seq2seq translator on one core.

import captioner
model = captioner.load()                                      # the default model, or captioner.load(PATH)
results = model.caption(["cat.jpg", "bus.png"], n_best=3)     # caption, words, attention, score, candidates
best = captioner.train(captioner.load_config("configs/stamps.yaml"))
"""

from captioner.config import Config, LMConfig, TranslateConfig, load_config
from captioner.pipeline import Candidate, CaptionModel, ImageCaption, caption_images, load
from captioner.tasks import captioning, char_lm, translation
from captioner.tasks.captioning import evaluate, fit
from captioner.tasks.captioning import restore as load_captioner
from captioner.vocab import Vocab

train = fit  # train a captioner from a config: captioner.train(captioner.load_config("configs/stamps.yaml"))

__all__ = [
    "CaptionModel",
    "Candidate",
    "Config",
    "ImageCaption",
    "LMConfig",
    "TranslateConfig",
    "Vocab",
    "caption_images",
    "captioning",
    "char_lm",
    "evaluate",
    "fit",
    "load",
    "load_captioner",
    "load_config",
    "train",
    "translation",
]
__version__ = "0.1.0"
