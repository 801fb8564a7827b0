"""One module per task, each offering the same verbs over the shared training code (captioner.training):

    build(config, vocabularies)      an untrained model
    fit(config, ...) -> best.pt      train, writing the run folder (config.yaml, vocab.json, metrics.jsonl,
                                     last.pt, best.pt)
    evaluate(checkpoint, ...)        score a trained model on held-out data
    restore(checkpoint, device)      the model, its config and its vocabularies, from the checkpoint alone
    generate(model, ...)             captions, translations or text

captioning (images -> captions), char_lm (text -> next character), translation (sentences -> sentences),
ball (the first positions of a flight -> the next ones).
"""
