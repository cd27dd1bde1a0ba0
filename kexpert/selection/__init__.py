"""Selection: K-shot expert selection (Algorithm 1) and Sim-Div data selection (Algorithm 2)."""
