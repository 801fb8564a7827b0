"""captioner: Show, Attend and Tell image captioning, a char-level LM and a seq2seq translator on one core."""

from captioner.config import Config, load_config
from captioner.decoding import Generation, beam_search, greedy, sample
from captioner.engine import fit, restore_captioner
from captioner.models.attention import AdditiveAttention
from captioner.models.captioner import Captioner, caption_loss
from captioner.models.core import RecurrentCore
from captioner.models.decoder import AttentionDecoder
from captioner.models.image_encoder import ImageEncoder
from captioner.vocab import Vocab

__all__ = [
    "AdditiveAttention",
    "AttentionDecoder",
    "Captioner",
    "Config",
    "Generation",
    "ImageEncoder",
    "RecurrentCore",
    "Vocab",
    "beam_search",
    "caption_loss",
    "fit",
    "greedy",
    "load_config",
    "restore_captioner",
    "sample",
]
__version__ = "0.1.0"
