"""Which nodes of a model file each profiled onnxruntime node computes, and which FP32 node each INT8 node is.

Two rewrites stand between a row of the FP32 file and a node of a profile:

1. **onnxruntime's graph optimisation** (ORT_ENABLE_ALL, what the bench runs) fuses nodes (Conv + Relu ->
   FusedConv, Conv + Add + Relu -> one NCHWc Conv), converts layouts (NCHWc blocks, NHWC for the int8 convs)
   and inserts the nodes that convert them. The profile names the nodes of the *optimised* graph, which the
   profile agent saves and reads on the machine that ran it. `map_optimized` assigns every node of the file
   to the optimised node that computes it: first what the names say (onnxruntime keeps a node's name, or
   derives a fused node's name from one of its nodes or tensors, e.g. ``/stem/act/Relu_output_0_nchwc``, or
   names the output of a rewritten node after it: ``QLinearConv_token_578`` writes ``QLinearConv_1``) and
   which file tensors an optimised node still produces (through the layout nodes it added); then each node
   left over joins a neighbour's optimised node, the one the optimised graph's edges allow (a fused Add joins
   the convolution that reads the other branch, a Relu the node before it, a convolution the node after it).
2. **the quantizer** (the artifact's INT8 file) turns Conv into QLinearConv (or wraps it in Q/DQ), drops the
   Relu whose clamp the output's quantization does, adds QuantizeLinear/DequantizeLinear, and the pipeline
   renames every node and tensor (`compact_names`): no name survives but the graph's input and output.
   `map_int8` matches the two graphs by their data flow from the input (Q/DQ pass a value on), the op
   (QLinearConv is a Conv) and, where one tensor feeds several such nodes, the weight's shape and order.

Nothing is assigned silently: a file node that no optimised node computes, an optimised node no file node
maps to, and an INT8 node without an FP32 counterpart come out with the reason.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Mapping

# nodes onnxruntime inserts to change a tensor's layout (they compute nothing of the model)
LAYOUT_OPS = frozenset({"Transpose", "ReorderInput", "ReorderOutput"})
# one weighted product each: an optimised node holds at most one of them
HEAVY_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "FusedConv", "FusedGemm", "FusedMatMul",
                       "QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger", "NhwcFusedConv",
                       "NhwcConv"})
# the quantizer's op for each float op (QOperator format); QDQ keeps the float op between Q/DQ
INT8_FAMILY = {"QLinearConv": "Conv", "ConvInteger": "Conv", "QLinearMatMul": "MatMul", "MatMulInteger": "MatMul",
               "QGemm": "Gemm", "QLinearAdd": "Add", "QLinearMul": "Mul", "QLinearConcat": "Concat",
               "QLinearGlobalAveragePool": "GlobalAveragePool", "QLinearAveragePool": "AveragePool",
               "QLinearLeakyRelu": "LeakyRelu", "QLinearSigmoid": "Sigmoid", "QLinearSoftmax": "Softmax",
               "QLinearReduceMean": "ReduceMean", "QLinearWhere": "Where"}
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
# activations the quantizer removes: the quantized output's range (zero point, scale) does their clamp
FOLDED_ACTIVATIONS = frozenset({"Relu", "Clip"})
NO_KERNEL_OPS = frozenset({"Identity", "Dropout"})
# onnx TensorProto element types UINT8 and INT8
EIGHT_BIT = frozenset({2, 3})
# float ops onnxruntime's QDQ fusions turn into int8 kernels when a DequantizeLinear feeds them and a
# QuantizeLinear reads them (its QDQ selectors)
QDQ_FUSED = frozenset({"Conv", "MatMul", "Gemm", "Add", "Mul", "Concat", "GlobalAveragePool", "AveragePool",
                       "MaxPool", "LeakyRelu", "Sigmoid", "Softmax", "Resize", "Reshape", "Transpose", "Flatten",
                       "Squeeze", "Unsqueeze", "Gather", "Where", "ReduceMean", "Split"})


@dataclass(frozen=True)
class Node:
    name: str
    op_type: str
    domain: str = ""
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()


@dataclass
class Graph:
    """A graph's nodes in file order and the names of its constant tensors."""

    nodes: list[Node]
    initializers: frozenset[str] = frozenset()
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    producer: dict[str, str] = field(init=False)
    consumers: dict[str, list[str]] = field(init=False)
    by_name: dict[str, Node] = field(init=False)

    def __post_init__(self) -> None:
        self.producer = {output: node.name for node in self.nodes for output in node.outputs if output}
        self.consumers = defaultdict(list)
        for node in self.nodes:
            for name in node.inputs:
                if name:
                    self.consumers[name].append(node.name)
        self.by_name = {node.name: node for node in self.nodes}

    @classmethod
    def from_onnx(cls, model: Any) -> "Graph":
        graph = model.graph
        nodes = [Node(node.name or f"{node.op_type}_{index}", node.op_type, node.domain, tuple(node.input),
                      tuple(node.output)) for index, node in enumerate(graph.node)]
        return cls(nodes, frozenset(item.name for item in graph.initializer), tuple(v.name for v in graph.input),
                   tuple(v.name for v in graph.output))

    @classmethod
    def from_agent(cls, data: Mapping[str, Any]) -> "Graph":
        """The optimised graph as the profile agent read it on the machine that ran it."""
        nodes = [Node(str(item["name"]), str(item["op_type"]), str(item.get("domain", "")),
                      tuple(item.get("inputs", ())), tuple(item.get("outputs", ()))) for item in data["nodes"]]
        return cls(nodes, frozenset(data.get("initializers", ())), tuple(data.get("inputs", ())),
                   tuple(data.get("outputs", ())))

    def constants(self) -> set[str]:
        """Initializers and what nodes compute from constants alone (Constant, a weight's DequantizeLinear)."""
        constant = set(self.initializers)
        for node in self.nodes:  # file order is topological
            if all(not name or name in constant for name in node.inputs):
                constant.update(node.outputs)
        return constant

    def topological(self) -> list[Node]:
        """The nodes, producers before consumers (file order already is for the files written here)."""
        seen: set[str] = set()
        ordered: list[Node] = []
        pending = list(self.nodes)
        available = set(self.initializers) | set(self.inputs) | {""}
        while pending:
            progressed = []
            for node in pending:
                if all(name in available for name in node.inputs):
                    ordered.append(node)
                    available.update(node.outputs)
                    seen.add(node.name)
                    progressed.append(node.name)
            if not progressed:  # a cycle or an unknown input: keep the rest in file order
                ordered += [node for node in pending if node.name not in seen]
                break
            pending = [node for node in pending if node.name not in seen]
        return ordered


class _Classes:
    """Union-find over tensor names: tensors that hold one value (a layout change, a Q/DQ pair)."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, name: str) -> str:
        self.parent.setdefault(name, name)
        while self.parent[name] != name:
            self.parent[name] = self.parent[self.parent[name]]
            name = self.parent[name]
        return name

    def union(self, first: str, second: str) -> None:
        self.parent[self.find(first)] = self.find(second)


# --- onnxruntime's rewrite ------------------------------------------------------------------------------------


@dataclass
class OptimizedMap:
    """The file's nodes against the optimised graph's.

    ``group``: file node -> the optimised node that computes it; ``how``: why (name, output, fused, ...);
    ``missing``: file nodes no optimised node computes -> why; ``extras``: optimised nodes that compute no
    file node -> why.
    """

    group: dict[str, str] = field(default_factory=dict)
    how: dict[str, str] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    extras: dict[str, str] = field(default_factory=dict)

    def members(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = defaultdict(list)
        for node, owner in self.group.items():
            found[owner].append(node)
        return found


def _name_seed(name: str, nodes: Mapping[str, Node], producer: Mapping[str, str]) -> str | None:
    """The file node an optimised node's name comes from: the longest file node or tensor name it starts with,
    followed by nothing or by onnxruntime's "_..." suffix (``_token_3``, ``_nchwc``, ``_bn_nchwc``)."""
    best: str | None = None
    for cut in range(len(name), 0, -1):
        if cut < len(name) and name[cut] != "_":
            continue
        prefix = name[:cut]
        if prefix in nodes:
            best = prefix
        elif prefix in producer:
            best = producer[prefix]
        if best is not None:
            return best
    return None


def map_optimized(file: Graph, optimized: Graph) -> OptimizedMap:
    """Assign every node of `file` to the node of `optimized` (onnxruntime's rewrite of it) that computes it."""
    result = OptimizedMap()
    constants = file.constants()
    layout = {node.name for node in optimized.nodes
              if node.op_type in LAYOUT_OPS and file.by_name.get(node.name, Node("", "")).op_type != node.op_type}
    classes = _Classes()
    for node in optimized.nodes:
        if node.name in layout and node.inputs and node.outputs:
            classes.union(node.inputs[0], node.outputs[0])
    file_tensors = set(file.producer) | set(file.inputs)
    holds: dict[str, set[str]] = defaultdict(set)  # class -> file tensors it holds
    for tensor in file_tensors:
        holds[classes.find(tensor)].add(tensor)
    compute = [node for node in optimized.nodes if node.name not in layout]

    def assign(file_node: str, owner: str, how: str) -> None:
        if file_node not in result.group and file_node in file.by_name:
            result.group[file_node] = owner
            result.how[file_node] = how

    for node in compute:  # kept as it was
        if node.name in file.by_name:
            assign(node.name, node.name, "same node")
    for node in compute:  # produces (through layout changes) a tensor of the file
        for output in node.outputs:
            for tensor in holds.get(classes.find(output), ()):
                if tensor in file.producer:
                    assign(file.producer[tensor], node.name, f"produces {tensor}")
    for node in compute:  # named after one of the file's nodes or tensors
        seed = _name_seed(node.name, file.by_name, file.producer)
        if seed is not None:
            assign(seed, node.name, "named after it")
    for node in compute:  # its output named after a file node (onnxruntime 1.16's NHWC int8 convolutions)
        for output in node.outputs:
            if output in file.by_name and output not in file_tensors:
                assign(output, node.name, "its output is named after it")

    feeds: dict[str, set[str]] = defaultdict(set)  # optimised node -> optimised nodes that read its output
    made_by = {classes.find(output): node.name for node in compute for output in node.outputs}
    for node in compute:
        for name in node.inputs:
            source = made_by.get(classes.find(name)) if name else None
            if source is not None and source != node.name:
                feeds[source].add(node.name)
    for node in file.nodes:  # constants onnxruntime folds at load time: no kernel runs for them
        if node.name not in result.group and all(name in constants for name in node.outputs if name):
            result.missing[node.name] = "constant: onnxruntime folds it when the model is loaded (no kernel runs)"
    _absorb(file, constants, result, feeds)
    for node in file.nodes:
        if node.name not in result.group and node.name not in result.missing:
            result.missing[node.name] = ("removed by onnxruntime's optimiser (no kernel runs)"
                                         if node.op_type in NO_KERNEL_OPS else "not found in the optimised graph")
    owners = set(result.group.values())
    for node in optimized.nodes:
        if node.name in owners:
            continue
        if node.name in layout:
            result.extras[node.name] = (f"{node.op_type}: a layout change onnxruntime inserted (NCHWc blocks or NHWC "
                                        "for its int8 kernels); no node of the file")
        else:
            result.extras[node.name] = f"{node.op_type}: inserted by onnxruntime; no node of the file"
    return result


def _absorb(file: Graph, constants: set[str], result: OptimizedMap, feeds: Mapping[str, set[str]]) -> None:
    """Give each unassigned file node the optimised node of a neighbour that the optimised graph's edges allow."""
    heavy_groups = {result.group[name] for name in result.group if file.by_name[name].op_type in HEAVY_OPS}
    order = file.topological()
    changed = True
    while changed:
        changed = False
        for node in order:
            if node.name in result.group or node.name in result.missing:
                continue
            producers = [file.producer[name] for name in node.inputs
                         if name and name not in constants and name in file.producer]
            consumers = [consumer for name in node.outputs if name for consumer in file.consumers.get(name, ())]
            before = [result.group[p] for p in producers if p in result.group]
            after = [result.group[c] for c in consumers if c in result.group]
            if not before and not after:
                continue
            heavy = node.op_type in HEAVY_OPS
            ordered = (after + before) if heavy else (before + after)
            for candidate in dict.fromkeys(ordered):
                if heavy and candidate in heavy_groups:
                    continue
                fits = (all(owner == candidate or candidate in feeds.get(owner, ()) for owner in before)
                        and all(owner == candidate or owner in feeds.get(candidate, ()) for owner in after))
                if fits:
                    result.group[node.name] = candidate
                    result.how[node.name] = "fused into it"
                    if heavy:
                        heavy_groups.add(candidate)
                    changed = True
                    break


# --- the quantizer's rewrite ----------------------------------------------------------------------------------


@dataclass
class Int8Map:
    """The INT8 file's nodes against the FP32 file's.

    ``counterpart``: FP32 node -> its INT8 node; ``folded``: FP32 node -> (INT8 node whose output does its work,
    why) for nodes the quantizer removed; ``unmatched``: FP32 nodes with neither -> why; ``int8_only``: INT8
    nodes with no FP32 node -> why; ``precision``: FP32 node -> "int8" or "float" (what its INT8 node computes in).
    """

    counterpart: dict[str, str] = field(default_factory=dict)
    folded: dict[str, tuple[str | None, str]] = field(default_factory=dict)
    unmatched: dict[str, str] = field(default_factory=dict)
    int8_only: dict[str, str] = field(default_factory=dict)
    precision: dict[str, str] = field(default_factory=dict)

    @property
    def fp32_of(self) -> dict[str, str]:
        return {int8: fp32 for fp32, int8 in self.counterpart.items()}


def _weight_shape(graph: Graph, node: Node, shapes: Mapping[str, list[int]], constants: set[str]) -> tuple | None:
    """The shape of a heavy node's first constant input of rank >= 2 (its weight), through a DequantizeLinear."""
    for name in node.inputs:
        source = name
        while source in graph.producer and source not in graph.initializers:
            producer = graph.by_name[graph.producer[source]]
            if producer.op_type != "DequantizeLinear":
                break
            source = producer.inputs[0]
        if name in constants and len(shapes.get(source, ())) >= 2:
            return tuple(shapes[source])
    return None


def map_int8(fp32: Graph, int8: Graph, fp32_shapes: Mapping[str, list[int]],
             int8_shapes: Mapping[str, list[int]], int8_types: Mapping[str, int]) -> Int8Map:
    """Match each FP32 node to the INT8 node that computes it, by data flow from the graph's input."""
    result = Int8Map()
    constants32, constants8 = fp32.constants(), int8.constants()
    classes = _Classes()  # INT8 tensors holding one value: a Q/DQ passes its input on
    for node in int8.nodes:
        if node.op_type in QDQ_OPS and node.inputs and node.outputs:
            classes.union(node.inputs[0], node.outputs[0])
    value: dict[str, str] = {name: classes.find(name) for name in fp32.inputs if name in int8.producer
                             or name in int8.inputs}
    used: set[str] = set()

    def data_inputs(graph: Graph, node: Node, constant: set[str]) -> list[str]:
        return [name for name in node.inputs if name and name not in constant]

    readers: dict[str, list[Node]] = defaultdict(list)  # value class -> INT8 nodes reading it (file order)
    for node in int8.nodes:
        if node.op_type in QDQ_OPS:
            continue
        for name in data_inputs(int8, node, constants8):
            readers[classes.find(name)].append(node)
    for node in fp32.topological():
        inputs = data_inputs(fp32, node, constants32)
        if not inputs or node.name in result.counterpart:
            if not inputs:
                result.folded[node.name] = (None, "a constant: no INT8 node computes it at run time")
            continue
        if any(name not in value for name in inputs):
            result.unmatched[node.name] = "an input of it has no INT8 counterpart"
            continue
        wanted = sorted(value[name] for name in inputs)
        candidates = [candidate for candidate in readers.get(value[inputs[0]], ())
                      if candidate.name not in used
                      and INT8_FAMILY.get(candidate.op_type, candidate.op_type) == node.op_type
                      and sorted(classes.find(name) for name in data_inputs(int8, candidate, constants8)) == wanted]
        if node.op_type in HEAVY_OPS and len(candidates) > 1:
            shape = _weight_shape(fp32, node, fp32_shapes, constants32)
            same = [c for c in candidates if _weight_shape(int8, c, int8_shapes, constants8) == shape]
            candidates = same or candidates
        if candidates:
            match = candidates[0]
            used.add(match.name)
            result.counterpart[node.name] = match.name
            for mine, theirs in zip(node.outputs, match.outputs):
                value[mine] = classes.find(theirs)
            result.precision[node.name] = _precision(int8, match, int8_types, constants8)
        elif node.op_type in FOLDED_ACTIVATIONS and len(inputs) == 1:
            value[node.outputs[0]] = value[inputs[0]]
            source = int8.producer.get(_last_compute(int8, value[inputs[0]], classes))
            result.folded[node.name] = (source, f"{node.op_type} removed by the quantizer: the quantized output "
                                                "range of the node before it does its clamp")
        else:
            result.unmatched[node.name] = f"no INT8 {node.op_type} reads the same values"
    for node in int8.nodes:
        if node.name in used:
            continue
        if node.op_type in QDQ_OPS:
            constant = all(name in constants8 for name in node.inputs if name)
            result.int8_only[node.name] = (f"{node.op_type} of a weight (QDQ format; onnxruntime fuses it into the "
                                           "int8 kernel)" if constant else
                                           f"{node.op_type}: converts between int8 and float tensors (at the "
                                           "graph's input and output, around nodes computed in float)")
        else:
            result.int8_only[node.name] = f"{node.op_type}: no FP32 node computes the same values"
    return result


def _last_compute(graph: Graph, value_class: str, classes: _Classes) -> str:
    """A tensor of `value_class` produced by a node that is not a Q/DQ (the node whose output it is)."""
    for name, producer in graph.producer.items():
        if classes.find(name) == value_class and graph.by_name[producer].op_type not in QDQ_OPS:
            return name
    return ""


def _precision(graph: Graph, node: Node, types: Mapping[str, int], constants: set[str]) -> str:
    """"int8" where the INT8 file computes the node on 8-bit values (a QLinear op, an op on uint8/int8 tensors, or
    a float op between a DequantizeLinear and a QuantizeLinear that onnxruntime fuses into an int8 kernel),
    "float" where it stays float (BatchNormalization between Q/DQ, a node kept in float)."""
    if node.op_type in INT8_FAMILY:
        return "int8"
    data = [name for name in node.inputs if name and name not in constants]
    if any(types.get(name) in EIGHT_BIT for name in data):
        return "int8"
    reads_dq = any(graph.by_name[graph.producer[name]].op_type == "DequantizeLinear"
                   for name in data if name in graph.producer)
    feeds_q = any(graph.by_name[consumer].op_type == "QuantizeLinear"
                  for name in node.outputs for consumer in graph.consumers.get(name, ()))
    return "int8" if reads_dq and feeds_q and node.op_type in QDQ_FUSED else "float"
