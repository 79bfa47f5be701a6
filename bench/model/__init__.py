"""The model side: loading (`from_pretrained`), the model walk (blocks and their linear layers), pruned-model
artifacts, and the project's own small models (the zoo). The pruning harness and the kernel side build on it."""
