"""captioner: Show, Attend and Tell image captioning, a char-level LM and a seq2seq translator on one core.

import captioner
results = captioner.caption_images(["cat.jpg"])               # the default model, or checkpoint=PATH
model, config, vocab = captioner.load_captioner("runs/stamps/best.pt")
best = captioner.train(captioner.load_config("configs/stamps.yaml"))
"""

from captioner.config import Config, LMConfig, TranslateConfig, load_config
from captioner.pipeline import ImageCaption, caption_images
from captioner.tasks import captioning, char_lm, translation
from captioner.tasks.captioning import evaluate, fit
from captioner.tasks.captioning import restore as load_captioner
from captioner.vocab import Vocab

train = fit  # train a captioner from a config: captioner.train(captioner.load_config("configs/stamps.yaml"))

__all__ = [
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
    "load_captioner",
    "load_config",
    "train",
    "translation",
]
__version__ = "0.1.0"
