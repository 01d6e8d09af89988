"""Stand-in of rtmaps.base_component.BaseComponent: what a Python-bridge component declares and touches.

Strict where RTMaps' templates are explicit: inputs, outputs and properties are declared in Dynamic()
only; an output of a numeric type takes numbers (a vector no longer than its buffer size); an ENUM
property is declared as "COUNT|DEFAULT_INDEX|name|name..." and reads as its index (.data) or its name
(.get_selected_value()).
"""

import numbers

import numpy as np

import rtmaps.core
import rtmaps.reading_policy
import rtmaps.types


class StandInError(RuntimeError):
    """A component used the API in a way RTMaps would refuse."""


class Property(object):
    def __init__(self, name, default, kind):
        self.name = name
        self.kind = kind
        if kind == rtmaps.types.ENUM:
            parts = str(default).split("|")
            count, index = int(parts[0]), int(parts[1])
            self.choices = parts[2:]
            if len(self.choices) != count or not 0 <= index < count:
                raise StandInError("ENUM property {!r}: {!r} is not COUNT|INDEX|names".format(name, default))
            self.data = index
        else:
            self.choices = None
            self.data = default

    def get_selected_value(self):
        if self.choices is None:
            raise StandInError("property {!r} is not an ENUM".format(self.name))
        return self.choices[self.data]

    def set(self, value):
        """What the user types in Studio: a name for an ENUM, else a value of the default's type."""
        if self.choices is not None:
            if value not in self.choices:
                raise StandInError("property {!r} takes one of {}, not {!r}".format(self.name, self.choices, value))
            self.data = self.choices.index(value)
        else:
            self.data = type(self.data)(value)


class Input(object):
    def __init__(self, name, kind):
        self.name = name
        self.kind = kind
        self.ioelt = None


class Output(object):
    def __init__(self, name, kind, buffer_size):
        self.name = name
        self.kind = kind
        self.buffer_size = buffer_size
        self.written = []

    def write(self, sample):
        if isinstance(sample, rtmaps.types.Ioelt):
            ts, data = sample.ts, sample.data
        else:
            ts, data = rtmaps.core.current_time(), sample
        self._check(data)
        self.written.append((ts, data))

    def _check(self, data):
        if self.kind not in rtmaps.types.NUMERIC:
            return
        values = np.asarray(data)
        if values.dtype.kind not in "biuf" or (self.kind.startswith(("INTEGER", "UINTEGER")) and values.dtype.kind == "f"):
            raise StandInError("output {!r} ({}) cannot take {!r}".format(self.name, self.kind, data))
        limit = self.buffer_size or 1
        if values.size > limit or (values.ndim == 0 and not isinstance(data, (numbers.Number, np.generic))):
            raise StandInError("output {!r} ({}, buffer size {}) cannot take {} values".format(
                self.name, self.kind, limit, values.size))


class BaseComponent(object):
    def __init__(self):
        self.inputs = {}
        self.outputs = {}
        self.properties = {}
        self.reading_policy = rtmaps.reading_policy.REACTIVE
        self._in_dynamic = False

    def _declaring(self, what):
        if not self._in_dynamic:
            raise StandInError("{} must be called in Dynamic()".format(what))

    def add_input(self, name, kind):
        self._declaring("add_input")
        self.inputs[name] = Input(name, kind)

    def add_output(self, name, kind, buffer_size=None):
        self._declaring("add_output")
        self.outputs[name] = Output(name, kind, buffer_size)

    def add_property(self, name, default, kind=None):
        self._declaring("add_property")
        if name not in self.properties:  # Dynamic() runs again after a property changes: keep the user's value
            self.properties[name] = Property(name, default, kind)

    def get_property(self, name):
        return self.properties[name].data

    def force_reading_policy(self, policy):
        if policy not in rtmaps.reading_policy.ALL:
            raise StandInError("unknown reading policy {!r}".format(policy))
        self.reading_policy = policy

    def write(self, name, data):
        self.outputs[name].write(data)
