"""Model files that outlive the code that wrote them.

A `.keras` file stores each weight under the path Keras walks to it: attribute
names, and class names inside layer lists. Renaming either would leave old files
unreadable, so every file records the layout it was written in
(`LAYOUT_ATTRIBUTE` on the weights file) and a model reads older layouts through
its `legacy_weight_paths`: for each layer whose path changed, the groups that
held its variables, in order. Layout 1 is every file written by tfp_vae 0.1.0.
"""

LAYOUT_ATTRIBUTE = "tfp_vae_layout"
LAYOUT = 2
FIRST_LAYOUT = 1


class RestorableLayer:
    """A layer that takes its weights from an older file's paths when its model says so.

    `restore_legacy` assigns them and marks the layer, so that Keras's own pass,
    which then looks for the layer at today's path and finds nothing there, skips it.
    """

    restored_from_legacy_file = False

    def restore_legacy(self, values: list) -> None:
        variables = self._trainable_weights + self._non_trainable_weights  # Keras's order for a layer's own
        if len(values) != len(variables):
            raise ValueError(f"layer {self.name!r} has {len(variables)} weights; the file holds {len(values)}")
        for variable, value in zip(variables, values):
            variable.assign(value)
        self.restored_from_legacy_file = True

    def load_own_variables(self, store):
        if self.restored_from_legacy_file:
            self.restored_from_legacy_file = False
            return
        super().load_own_variables(store)


def stamp_layout(store) -> None:
    """Marks a weights file being written (the model's own group) with today's layout."""
    if hasattr(store, "file"):
        store.file.attrs[LAYOUT_ATTRIBUTE] = LAYOUT


def restore_legacy_layout(store, legacy_weight_paths: dict) -> None:
    """Reads the layers whose paths changed from an older file, if `store` (the model's own group) is one.

    `legacy_weight_paths` maps each such `RestorableLayer` to the groups of layout 1
    that held its variables, in order.
    """
    if not hasattr(store, "file") or store.file.attrs.get(LAYOUT_ATTRIBUTE, FIRST_LAYOUT) == LAYOUT:
        return
    file = store.file
    for layer, paths in legacy_weight_paths.items():
        values = []
        for path in paths:
            group = file[path]["vars"] if path in file and "vars" in file[path] else {}
            values += [group[str(i)][()] for i in range(len(group))]
        layer.restore_legacy(values)
