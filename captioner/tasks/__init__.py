"""One module per task, each the same shape: a Task for the one training loop (captioner.training), and the
verbs a user calls.

    fit(config, resume=False, log=print) -> best.pt   train through the loop, writing the run folder
    evaluate(checkpoint, ...)                          score a trained model on held-out data
    generate(model, ...)                               what the model makes: captions, text, translations,
                                                       class probabilities, a path

A model comes back from its checkpoint alone through captioner.models.registry.restore, the same triple for
every task. captioning (images -> captions), char_lm (text -> the next character), translation (sentences
-> sentences), sentiment (a text -> negative / neutral / positive), ball (a flight's first positions -> the
next ones).
"""
