"""The short per-epoch line stages 1 and 3 print (log.jsonl keeps the full-precision record)."""
from wildcapture.training_run import epoch_summary


def test_values_are_rounded_to_three_significant_digits():
    line = epoch_summary(11, 60, {"train_loss": 0.21349, "val_acc": 0.96234, "best": 0.97}, 4.0789)
    assert line == "epoch 12/60  train_loss 0.213  val_acc 0.962  best 0.970  4.1 s"
    line = epoch_summary(0, 3, {"val_loss": 1.23456e-5, "big": 123.4, "huge": 98765.0, "one": 1.0}, 0.04)
    assert line == "epoch 1/3  val_loss 1.23e-05  big 123  huge 9.88e+04  one 1.00  0.0 s"
