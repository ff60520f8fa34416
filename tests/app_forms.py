"""Reading an operator's resolved form as the App gets it, its collapsed sections included."""

import fiftyone.operators.types as types


def form_inputs(form) -> dict:
    """{name: Property} of every input of `form` (a resolved form Property), those of collapsed sections too."""
    found = {}
    for name, prop in form.type.properties.items():
        if isinstance(prop.type, types.Object) and isinstance(prop.view, types.ObjectView):
            found.update(prop.type.properties)
        else:
            found[name] = prop
    return found


def form_errors(form) -> dict:
    """{name: message} of the inputs the form marks invalid (a section's own mark is not an input's)."""
    return {name: p.error_message for name, p in form_inputs(form).items() if getattr(p, "invalid", False)}
