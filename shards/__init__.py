"""Raw datasets on disk -> WebDataset shards of canonical clips + index.parquet + manifest.json.

Layout of this package:
  sources/     one adapter per published dataset layout (UCF-101, SSv2, ImageNet-100, Diving-48 V2,
               generic class folders); each checks the layout and lists samples, doing no media work
  transcode    one source file -> canonical clip (VP9/H.264, CFR, short GOP, capped short side) or JPEG
  tarwriter    rolling tars with member byte offsets, written as .tar.tmp and renamed when complete
  catalog      index.parquet schema and manifest.json, merged per split
  buildstate   the resume journal that lets a killed build finish without duplicates or losses
  pipeline     one split: parallel transcodes in a fixed order -> shards -> catalog
  build        the CLI: `python -m shards.build <source> --root RAW --out OUT ...`
  synth/       the synth suite's generator, and (synth/plan) the `synth` source: generate the raw trees,
               then plan them with the real adapters

Nothing here imports torch. The output format is docs/contracts.md section 1.
"""
