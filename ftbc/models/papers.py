"""The papers the networks and methods come from, one entry each. The models' ``paper_name`` (timm's
cfg) and every registered method's ``reference`` (``ftbc methods``) read them here, the lowest layer
that needs them. The published figures' ``source`` column (results/published/) names the table each
figure comes from, a record of its own."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Paper:
    authors: str
    title: str  # in full, as the models' paper_name gives it
    venue: str
    short_title: str = ""  # as the methods' references abbreviate it (default: the title)

    @property
    def reference(self) -> str:
        """``'Authors, short title, venue'``, a method's ``reference``."""
        return f"{self.authors}, {self.short_title or self.title}, {self.venue}"

    @property
    def cite(self) -> str:
        """``'Authors, venue'`` (``'Li et al., ICML 2021'``)."""
        return f"{self.authors}, {self.venue}"


PAPERS: dict[str, Paper] = {
    "snnc": Paper("Li et al.",
                  "A Free Lunch From ANN: Towards Efficient, Accurate Spiking Neural Networks Calibration",
                  "ICML 2021", "A Free Lunch From ANN: Towards Efficient, Accurate SNN Calibration"),
    "opi": Paper("Bu et al.", "Optimized Potential Initialization for Low-latency Spiking Neural Networks", "AAAI 2022",
                 "Optimized Potential Initialization for Low-latency SNNs"),
    "qcfs": Paper("Bu et al.",
                  "Optimal ANN-SNN Conversion for High-accuracy and Ultra-low-latency Spiking Neural Networks",
                  "ICLR 2022", "Optimal ANN-SNN Conversion for High-accuracy and Ultra-low-latency SNNs"),
    "rts": Paper("Deng & Gu",
                 "Optimal Conversion of Conventional Artificial Neural Networks to Spiking Neural Networks",
                 "ICLR 2021", "Optimal Conversion of Conventional ANNs to SNNs"),
    "ftbc": Paper("Wu et al.", "FTBC: Forward Temporal Bias Correction for Optimizing ANN-SNN Conversion", "ECCV 2024"),
}
