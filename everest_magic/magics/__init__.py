"""IPython magics of everest_magic: the %everest line magic and %%everest cell magic."""
