"""The model library the stages and the trainer share: open_clip model configs (`configs/`), model
creation and tokenizers (`clip`), checkpoints (`checkpoint`), eval preprocessing (`preprocess`) and the
training config (`train_config`: what a checkpoint records and the filter stage sets)."""
