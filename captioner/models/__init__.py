"""Model building blocks: the recurrent core, attention, decoder, encoders and the composed models."""
