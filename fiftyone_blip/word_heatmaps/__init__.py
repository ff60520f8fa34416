"""Where BLIP looked: one heatmap per caption word, and one for the whole caption.

(The SDK function is `fiftyone_blip.heatmaps`, whose work is `run` here; a
module named `heatmaps` would replace that function on the package when
imported, so this one is `word_heatmaps`.)

Two modes:

- "cross-attention": one teacher-forced pass of the captioner's text decoder
  over the caption (`generate` returns no cross-attentions for BLIP), with
  attention outputs; heads and layers are averaged over a chosen set. A word's
  map is the mean over the decoder steps that read its word pieces and/or the
  steps that predict them (`token_positions`). Each word also gets its
  probability under the model (the product of its pieces' probabilities).
- "gradcam": BLIP's own Grad-CAM, for any text (a caption or a query): the
  gradient of the ITM head's match logit with respect to the cross-attention
  probabilities of one text-encoder layer, clamped at zero, times those
  probabilities, averaged over heads.

Maps come out on the model's patch grid (image_size // patch_size, read from
the config) and are mapped back onto the original image through the resize
`Geometry`, so an overlay lines up whatever the resize mode: with
center-crop, parts the model never saw are zero; with letterbox, the padding
is dropped. Stored maps are uint8 (0..255, each map scaled to its own range)
with the long side `map_size` pixels and the image's aspect.

`heatmap_task` turns a loaded model and `HeatmapSettings` into an engine
`Task` that writes, per sample (`F` is the field):

- `F`: an `fo.Heatmap` of the whole caption, which the App overlays;
- `F_words`: the caption's words (word pieces merged; punctuation dropped);
- `F_maps`: a uint8 array (words, height, width) of per-word maps, or, with
  `maps_dir`, `F_word_maps`: one `fo.Heatmap` per word, each a greyscale PNG
  file (`map_path`). FiftyOne's exporters treat every `map_path` of a Heatmap
  as media, also inside a list, so a FiftyOneDataset export with
  `export_media=True` copies the per-word files with the caption's and
  rewrites their paths (datasets written before kept plain paths in
  `F_map_paths`; they are still read);
- `F_text`: the text the maps explain;
- `F_probs` (cross-attention): each word's probability under the captioner;
  `F_match` (gradcam): the ITM match probability of image and text;
- `F_error` / `F_run`: written by the engine.

The package: `settings` (HeatmapSettings, caption words from word pieces),
`computing` (maps on the patch grid and back onto the image, `HeatmapMaker`,
`heatmap_task`, `run`), `stored` (reading a sample's stored maps, overlays,
the word panel's view).
"""

from fiftyone_blip.word_heatmaps.computing import (  # noqa: F401
    HeatmapMaker,
    check_model,
    check_writable_folder,
    field_descriptions,
    field_names,
    grid_to_image,
    heatmap_task,
    map_shape,
    peak,
    result_fields,
    run,
    save_map_files,
    sibling_names,
    task_for,
    to_uint8,
    writable_folder,
)
from fiftyone_blip.word_heatmaps.settings import (  # noqa: F401
    MAP_SETTINGS,
    MODE_LABELS,
    MODE_TASKS,
    MODES,
    TOKEN_POSITION_LABELS,
    TOKEN_POSITIONS,
    HeatmapSettings,
    default_gradcam_layer,
    merge_word_pieces,
)
from fiftyone_blip.word_heatmaps.stored import (  # noqa: F401
    MAX_OVERLAY_PIXELS,
    colour_scale,
    data_url,
    display_size,
    heatmap_fields,
    overlay,
    word_maps,
    word_view,
    write_overlays,
)
