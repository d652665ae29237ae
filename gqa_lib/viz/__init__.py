"""Pictures: plotly figures, diagrams drawn by code, and the widgets with sliders for G.

- :mod:`.plots`: how figures are shown (Jupyter, Colab and the static website);
- :mod:`.figures`, :mod:`.diagrams`: the book's teaching figures and diagrams;
- :mod:`.speed_figures`, :mod:`.quality_figures`, :mod:`.minilm_figures`: figures of measured results;
- :mod:`.widgets`: the live and the precomputed decode explorers.
"""

from . import plots

__all__ = ["plots"]
