"""What serving loads: the versioned cotune export, the serving formats (vLLM, SGLang, Triton Inference
Server, @triton.autotune modules), the serving-side lookup and revalidation of exported configs.

Imports every layer below it, the driver included (revalidate re-tunes)."""
