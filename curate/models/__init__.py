"""The model library the stages and the trainer share: open_clip model configs (`configs/`), model
creation and tokenizers (`clip`), checkpoints (`checkpoint`) and eval preprocessing (`preprocess`)."""
