"""captioner: Show, Attend and Tell image captioning, and a char LM, a translator, a sentiment classifier and a
ball's path predictor on the same recurrent core.

import captioner
model = captioner.load()                                      # the default model, or captioner.load(PATH)
results = model.caption(["cat.jpg", "bus.png"], n_best=3)     # caption, words, attention, score, candidates
best = captioner.train(captioner.load_config("configs/stamps.yaml"))
model, config, vocabularies = captioner.restore("runs/lm/best.pt")   # any task's checkpoint
"""

from captioner.config import BallConfig, Config, LMConfig, SentimentConfig, TranslateConfig, load_config
from captioner.models.registry import restore
from captioner.pipeline import Candidate, CaptionModel, ImageCaption, caption_images, load
from captioner.tasks import ball, captioning, char_lm, sentiment, translation
from captioner.tasks.captioning import evaluate, fit
from captioner.vocab import Vocab

train = fit  # train a captioner from a config: captioner.train(captioner.load_config("configs/stamps.yaml"))

__all__ = [
    "BallConfig",
    "CaptionModel",
    "Candidate",
    "Config",
    "ImageCaption",
    "LMConfig",
    "SentimentConfig",
    "TranslateConfig",
    "Vocab",
    "ball",
    "caption_images",
    "captioning",
    "char_lm",
    "evaluate",
    "fit",
    "load",
    "load_config",
    "restore",
    "sentiment",
    "train",
    "translation",
]
__version__ = "0.1.0"
