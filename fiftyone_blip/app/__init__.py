"""The FiftyOne App's operators and panel, one module per capability; the plugin (`operators/`) registers them.

Each operator builds its form from the settings dataclasses (`fiftyone_blip.forms`),
checks it with the library's own checks and the engine's preflight, and its
`execute` is one `fiftyone_blip` call. Anything an operator does, a script can do.
"""

from fiftyone_blip.app.adapters import TrainLanguageAdapter
from fiftyone_blip.app.captioning import CaptionSamples, CleanCaptions, EvaluateCaptions
from fiftyone_blip.app.heatmaps import ComputeHeatmaps, WordHeatmapsPanel
from fiftyone_blip.app.label_qa import FindMislabels
from fiftyone_blip.app.questions import AskQuestion
from fiftyone_blip.app.search import ComputeEmbeddings, SearchByText

# in the order the App's operator browser lists them
OPERATORS = (
    CaptionSamples,
    CleanCaptions,
    EvaluateCaptions,
    ComputeHeatmaps,
    WordHeatmapsPanel,
    FindMislabels,
    ComputeEmbeddings,
    SearchByText,
    AskQuestion,
    TrainLanguageAdapter,
)
