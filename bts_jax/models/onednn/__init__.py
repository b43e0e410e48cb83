"""2-D convolutions through oneDNN on CPU (``config.model.conv_impl``; issue 29).

``ffi.onednn_conv_general_dilated`` is a drop-in ``lax.conv_general_dilated`` for NHWC/HWIO
convolutions; ``ffi.resolve_conv_impl`` says whether it runs; ``build`` compiles the extension.
"""
