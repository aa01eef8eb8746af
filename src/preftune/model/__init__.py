"""The model side: loading (:mod:`.loading`), the scorer that turns a causal LM into per-token log-probs
(:mod:`.scorer`, :mod:`.logps`), each response's summed log-prob from a batch (:mod:`.responses`), LoRA through peft (:mod:`.lora`) and sampling (:mod:`.generation`)."""
