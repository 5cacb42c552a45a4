"""The synthetic pool with ground truth (drawn scenes or a pairs folder plus planted noise), the loopback server
for its files, and the evaluation against its ground truth: a test and demo fixture, and the `synth` stage."""
