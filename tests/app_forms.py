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


def form_texts(form) -> list[tuple[str, str]]:
    """Every word a resolved form shows, as (where, text): labels, help, choices, notices and error messages,
    those of collapsed sections too."""
    texts = []

    def walk(prop, path):
        for name, inner in prop.type.properties.items():
            where = f"{path}{name}"
            view = inner.view
            for attr in ("label", "description", "caption"):
                text = getattr(view, attr, None)
                if isinstance(text, str) and text:
                    texts.append((f"{where}.{attr}", text))
            for choice in getattr(view, "choices", None) or []:
                texts.append((f"{where}.choice", choice.label or str(choice.value)))
            if getattr(inner, "error_message", None):
                texts.append((f"{where}.error", inner.error_message))
            if isinstance(inner.type, types.Object):
                walk(inner, f"{where}.")

    walk(form, "")
    return texts
