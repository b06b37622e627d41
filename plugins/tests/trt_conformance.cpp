// Host-side conformance harness of the TensorRT plugin library: everything TensorRT asks of an
// IPluginV3 plugin before and around enqueue, on the CPU, without TensorRT's runtime or a GPU.
//
//   ef_trt_conformance LIBRARY SPEC
//
// LIBRARY is loaded the way `trtexec --dynamicPlugins` / IPluginRegistry::loadLibrary do: dlopen,
// setLoggerFinder, getCreators. SPEC (written by edgeforge.ops.trt_conformance from real
// plugin-mode exports run on ONNX Runtime) lists the creators the exporter's nodes name and every
// edgeforge:: node the models emit with its fields, input shapes and ONNX Runtime's output shapes:
//
//   creator <name> <version> <namespace>
//   node <op> [<field>:<i|f>=<value> ...] | <in shape> <in shape> ... | <out shape> ...
//
// where a shape is dims joined by 'x' ("1x4x49x32"). Every check prints PASS or FAIL with what it
// saw; the last line is "<n> passed, <m> failed" and the exit status is 0 only without failures.
#include <NvInferRuntime.h>
#include <dlfcn.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace {

int passed = 0, failed = 0;

void check(bool ok, const std::string& what) {
    (ok ? passed : failed) += 1;
    std::printf("%s: %s\n", ok ? "PASS" : "FAIL", what.c_str());
}

// ------------------------------------------------------------------ logger (errors the plugins log)
class Logger : public ILogger {
  public:
    void log(Severity severity, const char* msg) noexcept override {
        if (severity <= Severity::kERROR) {
            ++errors;
            last = msg != nullptr ? msg : "";
        }
    }
    int errors = 0;
    std::string last;
};

class LoggerFinder : public ILoggerFinder {
  public:
    explicit LoggerFinder(ILogger* logger) : logger_(logger) {}
    ILogger* findLogger() noexcept override { return logger_; }

  private:
    ILogger* logger_;
};

// ------------------------------------------------------------------ dimension expressions
// TensorRT's IDimensionExpr / IExprBuilder are handles onto implementation objects (apiv::V*);
// these implement them on constants, named symbols and the nine operations, and evaluate an
// expression under a binding of the symbols.
class Expr;

class ExprImpl : public apiv::VDimensionExpr {
  public:
    enum Kind { kConst, kSymbol, kOp };
    Kind kind = kConst;
    int64_t value = 0;
    std::string symbol;
    DimensionOperation op = DimensionOperation::kSUM;
    const Expr* a = nullptr;
    const Expr* b = nullptr;
    bool isConstant() const override { return kind == kConst; }
    int64_t getConstantValue() const override { return kind == kConst ? value : -1; }
    bool isSizeTensor() const override { return false; }
};

class Expr : public IDimensionExpr {
  public:
    Expr() { mImpl = &impl; }
    ExprImpl impl;
    const ExprImpl& get() const { return impl; }
};

const ExprImpl& impl_of(const IDimensionExpr& e) { return static_cast<const Expr&>(e).get(); }

int64_t apply(DimensionOperation op, int64_t x, int64_t y) {
    switch (op) {
        case DimensionOperation::kSUM: return x + y;
        case DimensionOperation::kPROD: return x * y;
        case DimensionOperation::kMAX: return x > y ? x : y;
        case DimensionOperation::kMIN: return x < y ? x : y;
        case DimensionOperation::kSUB: return x - y;
        case DimensionOperation::kEQUAL: return x == y;
        case DimensionOperation::kLESS: return x < y;
        case DimensionOperation::kFLOOR_DIV: return y == 0 ? 0 : (x / y - ((x % y != 0) && ((x < 0) != (y < 0))));
        case DimensionOperation::kCEIL_DIV: return y == 0 ? 0 : (x / y + ((x % y != 0) && ((x < 0) == (y < 0))));
    }
    return 0;
}

// The value of e under `bind` (symbol -> value); false if a symbol is unbound or e is foreign.
bool eval(const IDimensionExpr* e, const std::map<std::string, int64_t>& bind, int64_t& out) {
    if (e == nullptr) return false;
    const ExprImpl& x = impl_of(*e);
    switch (x.kind) {
        case ExprImpl::kConst: out = x.value; return true;
        case ExprImpl::kSymbol: {
            auto it = bind.find(x.symbol);
            if (it == bind.end()) return false;
            out = it->second;
            return true;
        }
        case ExprImpl::kOp: {
            int64_t l = 0, r = 0;
            if (!eval(x.a, bind, l) || !eval(x.b, bind, r)) return false;
            out = apply(x.op, l, r);
            return true;
        }
    }
    return false;
}

class BuilderImpl : public apiv::VExprBuilder {
  public:
    const IDimensionExpr* constant(int64_t value) override {
        Expr* e = make();
        e->impl.kind = ExprImpl::kConst;
        e->impl.value = value;
        return e;
    }
    const IDimensionExpr* symbol(const std::string& name) {
        Expr* e = make();
        e->impl.kind = ExprImpl::kSymbol;
        e->impl.symbol = name;
        return e;
    }
    const IDimensionExpr* operation(DimensionOperation op, const IDimensionExpr& first,
                                    const IDimensionExpr& second) override {
        const ExprImpl &x = impl_of(first), &y = impl_of(second);
        if (x.kind == ExprImpl::kConst && y.kind == ExprImpl::kConst) return constant(apply(op, x.value, y.value));
        Expr* e = make();
        e->impl.kind = ExprImpl::kOp;
        e->impl.op = op;
        e->impl.a = static_cast<const Expr*>(&first);
        e->impl.b = static_cast<const Expr*>(&second);
        return e;
    }
    const IDimensionExpr* declareSizeTensor(int32_t, const IDimensionExpr&, const IDimensionExpr&) override {
        return nullptr;  // the edgeforge ops have no data-dependent shapes
    }

  private:
    Expr* make() {
        exprs_.push_back(std::make_unique<Expr>());
        return exprs_.back().get();
    }
    std::vector<std::unique_ptr<Expr>> exprs_;
};

class Builder : public IExprBuilder {
  public:
    Builder() { mImpl = &impl; }
    BuilderImpl impl;
};

// ------------------------------------------------------------------ resource context for attachToContext
class ResourceContext : public IPluginResourceContext {
  public:
    IGpuAllocator* getGpuAllocator() const noexcept override { return nullptr; }
    IErrorRecorder* getErrorRecorder() const noexcept override { return nullptr; }
};

// ------------------------------------------------------------------ spec
using Shape = std::vector<int64_t>;

struct FieldValue {
    char kind = 'i';  // 'i' int32, 'f' float32
    int32_t i = 0;
    float f = 0.0f;
};

struct NodeSpec {
    std::string op;
    std::map<std::string, FieldValue> fields;
    std::vector<Shape> inputs, outputs;
    std::string line;
};

struct Spec {
    std::vector<std::vector<std::string>> creators;  // name, version, namespace
    std::vector<NodeSpec> nodes;
};

Shape parse_shape(const std::string& s) {
    Shape out;
    std::stringstream ss(s);
    for (std::string d; std::getline(ss, d, 'x');)
        if (!d.empty()) out.push_back(std::stoll(d));
    return out;
}

std::string shape_str(const Shape& s) {
    std::string o = "(";
    for (size_t i = 0; i < s.size(); ++i) o += (i ? ", " : "") + std::to_string(s[i]);
    return o + ")";
}

bool read_spec(const char* path, Spec& spec) {
    std::ifstream in(path);
    if (!in) return false;
    for (std::string line; std::getline(in, line);) {
        std::stringstream ss(line);
        std::string kind;
        ss >> kind;
        if (kind == "creator") {
            std::vector<std::string> c(3);
            ss >> c[0] >> c[1] >> c[2];
            spec.creators.push_back(c);
        } else if (kind == "node") {
            NodeSpec n;
            n.line = line;
            ss >> n.op;
            int part = 0;
            for (std::string tok; ss >> tok;) {
                if (tok == "|") {
                    ++part;
                } else if (part == 0) {
                    const size_t colon = tok.find(':'), eq = tok.find('=');
                    FieldValue v;
                    v.kind = tok[colon + 1];
                    const std::string val = tok.substr(eq + 1);
                    if (v.kind == 'i') v.i = std::stoi(val);
                    else v.f = std::stof(val);
                    n.fields[tok.substr(0, colon)] = v;
                } else {
                    (part == 1 ? n.inputs : n.outputs).push_back(parse_shape(tok));
                }
            }
            spec.nodes.push_back(n);
        }
    }
    return true;
}

// ------------------------------------------------------------------ plugin field collections
// Owns the storage of a PluginFieldCollection built field by field.
class Collection {
  public:
    void add_int(const std::string& name, int32_t v) { add(name, PluginFieldType::kINT32, &v, sizeof v, 1); }
    void add_int64(const std::string& name, int64_t v) { add(name, PluginFieldType::kINT64, &v, sizeof v, 1); }
    void add_float(const std::string& name, float v) { add(name, PluginFieldType::kFLOAT32, &v, sizeof v, 1); }
    void add_string(const std::string& name, const std::string& v) {
        add(name, PluginFieldType::kCHAR, v.c_str(), v.size() + 1, static_cast<int32_t>(v.size() + 1));
    }
    void add_raw(const std::string& name, PluginFieldType type, const void* data, size_t bytes, int32_t length) {
        add(name, type, data, bytes, length);
    }
    const PluginFieldCollection* get() {
        fields_.clear();
        for (size_t i = 0; i < names_.size(); ++i)
            fields_.emplace_back(names_[i].c_str(), data_[i].empty() ? nullptr : data_[i].data(), types_[i], lengths_[i]);
        fc_.nbFields = static_cast<int32_t>(fields_.size());
        fc_.fields = fields_.data();
        return &fc_;
    }

  private:
    void add(const std::string& name, PluginFieldType type, const void* data, size_t bytes, int32_t length) {
        names_.push_back(name);
        types_.push_back(type);
        lengths_.push_back(length);
        const auto* p = static_cast<const char*>(data);
        data_.emplace_back(p, p + bytes);
    }
    std::vector<std::string> names_;
    std::vector<PluginFieldType> types_;
    std::vector<int32_t> lengths_;
    std::vector<std::vector<char>> data_;
    std::vector<PluginField> fields_;
    PluginFieldCollection fc_{};
};

// The fields of a collection as "name:type=value" strings (for comparing serializations).
std::set<std::string> field_set(const PluginFieldCollection* fc) {
    std::set<std::string> out;
    for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i) {
        const PluginField& f = fc->fields[i];
        std::string v = "?";
        if (f.data != nullptr && f.length == 1) {
            if (f.type == PluginFieldType::kINT32) v = "i=" + std::to_string(*static_cast<const int32_t*>(f.data));
            if (f.type == PluginFieldType::kFLOAT32) v = "f=" + std::to_string(*static_cast<const float*>(f.data));
        }
        out.insert(std::string(f.name ? f.name : "<null>") + ":" + v);
    }
    return out;
}

std::string join(const std::set<std::string>& s) {
    std::string o;
    for (const auto& x : s) o += (o.empty() ? "" : " ") + x;
    return "{" + o + "}";
}

// ------------------------------------------------------------------ checks
using GetCreators = IPluginCreatorInterface* const* (*)(int32_t&);
using SetLoggerFinder = void (*)(ILoggerFinder*);

struct Plugin {
    IPluginV3* p = nullptr;
    IPluginV3OneCore* core = nullptr;
    IPluginV3OneBuild* build = nullptr;
    IPluginV3OneRuntime* runtime = nullptr;
    bool ok() const { return p && core && build && runtime; }
};

Plugin capabilities(IPluginV3* p) {
    Plugin x;
    x.p = p;
    if (p == nullptr) return x;
    x.core = static_cast<IPluginV3OneCore*>(p->getCapabilityInterface(PluginCapabilityType::kCORE));
    x.build = static_cast<IPluginV3OneBuild*>(p->getCapabilityInterface(PluginCapabilityType::kBUILD));
    x.runtime = static_cast<IPluginV3OneRuntime*>(p->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    return x;
}

// Output shapes from getOutputShapes, evaluated, with the inputs' dims given as constants, or with
// dim 0 of every input as the symbol "B" (a dynamic batch), or with every dim a distinct symbol.
enum class DimsMode { kConstant, kSymbolicBatch, kAllSymbolic };

bool output_shapes(IPluginV3OneBuild* build, const std::vector<Shape>& ins, int32_t nb_out, DimsMode mode,
                   std::vector<Shape>& outs, std::string& why) {
    Builder builder;
    std::map<std::string, int64_t> bind;
    std::vector<DimsExprs> in(ins.size());
    for (size_t i = 0; i < ins.size(); ++i) {
        in[i].nbDims = static_cast<int32_t>(ins[i].size());
        for (size_t d = 0; d < ins[i].size(); ++d) {
            std::string sym;
            if (mode == DimsMode::kSymbolicBatch && d == 0) sym = "B";
            if (mode == DimsMode::kAllSymbolic) sym = "in" + std::to_string(i) + "_" + std::to_string(d);
            if (sym.empty()) {
                in[i].d[d] = builder.impl.constant(ins[i][d]);
            } else {
                in[i].d[d] = builder.impl.symbol(sym);
                auto it = bind.find(sym);
                if (it != bind.end() && it->second != ins[i][d]) {
                    // inputs disagree on the batch: bind per input instead
                    in[i].d[d] = builder.impl.symbol(sym + std::to_string(i));
                    bind[sym + std::to_string(i)] = ins[i][d];
                } else {
                    bind[sym] = ins[i][d];
                }
            }
        }
    }
    std::vector<DimsExprs> out(static_cast<size_t>(nb_out));
    for (auto& o : out) o.nbDims = -1;
    const int32_t st = build->getOutputShapes(in.data(), static_cast<int32_t>(in.size()), nullptr, 0, out.data(),
                                              nb_out, builder);
    if (st != 0) {
        why = "getOutputShapes returned " + std::to_string(st);
        return false;
    }
    outs.clear();
    for (const DimsExprs& o : out) {
        if (o.nbDims < 0 || o.nbDims > Dims::MAX_DIMS) {
            why = "an output has nbDims " + std::to_string(o.nbDims);
            return false;
        }
        Shape s;
        for (int32_t d = 0; d < o.nbDims; ++d) {
            int64_t v = 0;
            if (!eval(o.d[d], bind, v)) {
                why = "output dim " + std::to_string(d) + " is not an expression over the inputs";
                return false;
            }
            if (mode == DimsMode::kConstant && !o.d[d]->isConstant()) {
                why = "output dim " + std::to_string(d) + " is not constant for constant inputs";
                return false;
            }
            s.push_back(v);
        }
        outs.push_back(s);
    }
    return true;
}

Dims to_dims(const Shape& s) {
    Dims d{};
    d.nbDims = static_cast<int32_t>(s.size());
    for (size_t i = 0; i < s.size(); ++i) d.d[i] = s[i];
    return d;
}

const DataType kTypes[] = {DataType::kFLOAT, DataType::kHALF, DataType::kINT8, DataType::kINT32, DataType::kBOOL,
                           DataType::kUINT8, DataType::kFP8,  DataType::kBF16, DataType::kINT64, DataType::kINT4};
const TensorFormat kFormats[] = {TensorFormat::kLINEAR, TensorFormat::kCHW2,   TensorFormat::kHWC8,
                                 TensorFormat::kCHW4,   TensorFormat::kCHW16,  TensorFormat::kCHW32,
                                 TensorFormat::kDHWC8,  TensorFormat::kCDHW32, TensorFormat::kHWC,
                                 TensorFormat::kDLA_LINEAR, TensorFormat::kDLA_HWC4, TensorFormat::kHWC16,
                                 TensorFormat::kDHWC};

// supportsFormatCombination over every type/format pair at every position: the plugins take
// linear float or half tensors, every tensor of the type of input 0.
void check_formats(const std::string& tag, IPluginV3OneBuild* build, const std::vector<Shape>& ins, int32_t nb_out) {
    const int32_t nb_in = static_cast<int32_t>(ins.size()), n = nb_in + nb_out;
    std::vector<DynamicPluginTensorDesc> io(static_cast<size_t>(n));
    int wrong = 0;
    std::string first;
    for (DataType t0 : {DataType::kFLOAT, DataType::kHALF}) {
        for (int32_t pos = 0; pos < n; ++pos) {
            for (int32_t i = 0; i < n; ++i) {  // everything before pos fixed to (t0, linear)
                io[i].desc.type = t0;
                io[i].desc.format = TensorFormat::kLINEAR;
                io[i].desc.dims = i < nb_in ? to_dims(ins[i]) : Dims{};
            }
            for (DataType t : kTypes)
                for (TensorFormat f : kFormats) {
                    io[pos].desc.type = t;
                    io[pos].desc.format = f;
                    const bool want = f == TensorFormat::kLINEAR &&
                                      (pos == 0 ? (t == DataType::kFLOAT || t == DataType::kHALF) : t == t0);
                    const bool got = build->supportsFormatCombination(pos, io.data(), nb_in, nb_out);
                    if (got != want) {
                        if (wrong++ == 0)
                            first = "pos " + std::to_string(pos) + " type " + std::to_string(static_cast<int>(t)) +
                                    " format " + std::to_string(static_cast<int>(f)) + " with input 0 of type " +
                                    std::to_string(static_cast<int>(t0)) + ": " + (got ? "accepted" : "rejected");
                }
            }
        }
    }
    check(wrong == 0, tag + " supportsFormatCombination: only linear float/half, all of input 0's type" +
                          (wrong ? " (" + std::to_string(wrong) + " wrong answers; first: " + first + ")" : ""));
}

size_t expected_workspace(const std::string& op, const std::vector<Shape>& ins) {
    if (op != "GatedAttention") return 0;
    const Shape &q = ins[0], &v = ins[2];
    // what the CUDA launch writes: cumulative forget gates (double) + accumulators (float) per row
    return static_cast<size_t>(q[0] * q[1] * q[2]) * (sizeof(double) + static_cast<size_t>(v[3]) * sizeof(float));
}

// The spec node's fields as TensorRT's ONNX parser passes them: each field the creator declares,
// in the declared type, when the node has it.
Collection node_fields(IPluginCreatorV3One* creator, const NodeSpec& n) {
    Collection c;
    const PluginFieldCollection* names = creator->getFieldNames();
    for (int32_t i = 0; names && i < names->nbFields; ++i) {
        auto it = n.fields.find(names->fields[i].name);
        if (it == n.fields.end()) continue;
        if (names->fields[i].type == PluginFieldType::kFLOAT32)
            c.add_float(it->first, it->second.kind == 'f' ? it->second.f : static_cast<float>(it->second.i));
        else
            c.add_int(it->first, it->second.kind == 'i' ? it->second.i : static_cast<int32_t>(it->second.f));
    }
    return c;
}

std::set<std::string> spec_field_set(const NodeSpec& n) {
    std::set<std::string> out;
    for (const auto& kv : n.fields)
        out.insert(kv.first + ":" + (kv.second.kind == 'i' ? "i=" + std::to_string(kv.second.i)
                                                             : "f=" + std::to_string(kv.second.f)));
    return out;
}

// Everything a built plugin must answer for one node (original, clone, attached, deserialized).
void check_plugin(const std::string& tag, IPluginCreatorV3One* creator, Plugin x, const NodeSpec& n, Logger& log) {
    if (!x.ok()) {
        check(false, tag + " has the core, build and runtime capabilities");
        return;
    }
    check(std::string(x.core->getPluginName()) == creator->getPluginName() &&
              std::string(x.core->getPluginVersion()) == creator->getPluginVersion() &&
              std::string(x.core->getPluginNamespace()) == creator->getPluginNamespace(),
          tag + " name/version/namespace " + x.core->getPluginName() + "/" + x.core->getPluginVersion() + "/" +
              x.core->getPluginNamespace() + " match its creator");
    const int32_t nb_out = x.build->getNbOutputs();
    check(nb_out == static_cast<int32_t>(n.outputs.size()),
          tag + " getNbOutputs " + std::to_string(nb_out) + " (ONNX Runtime: " + std::to_string(n.outputs.size()) + ")");
    if (nb_out != static_cast<int32_t>(n.outputs.size()) || nb_out < 1) return;
    const int32_t nb_in = static_cast<int32_t>(n.inputs.size());

    for (DataType t : {DataType::kFLOAT, DataType::kHALF}) {
        std::vector<DataType> in_types(static_cast<size_t>(nb_in), t), out_types(static_cast<size_t>(nb_out),
                                                                                  DataType::kINT8);
        const int32_t st = x.build->getOutputDataTypes(out_types.data(), nb_out, in_types.data(), nb_in);
        bool same = st == 0;
        for (DataType o : out_types) same = same && o == t;
        check(same, tag + " getOutputDataTypes gives the input type (" + (t == DataType::kFLOAT ? "float" : "half") + ")");
    }

    for (DimsMode mode : {DimsMode::kConstant, DimsMode::kSymbolicBatch, DimsMode::kAllSymbolic}) {
        std::vector<Shape> outs;
        std::string why;
        const bool ok = output_shapes(x.build, n.inputs, nb_out, mode, outs, why);
        std::string got;
        for (const Shape& s : outs) got += shape_str(s);
        std::string want;
        for (const Shape& s : n.outputs) want += shape_str(s);
        const char* label = mode == DimsMode::kConstant ? "constant" : mode == DimsMode::kSymbolicBatch
                                                                            ? "symbolic batch" : "all-symbolic";
        check(ok && outs == n.outputs, tag + " getOutputShapes (" + label + " inputs) " + (ok ? got : why) +
                                           " == ONNX Runtime's " + want);
    }

    // configurePlugin / onShapeChange accept the real shapes and reject a wrong rank cleanly.
    std::vector<DynamicPluginTensorDesc> din(static_cast<size_t>(nb_in)), dout(static_cast<size_t>(nb_out));
    std::vector<PluginTensorDesc> pin(static_cast<size_t>(nb_in)), pout(static_cast<size_t>(nb_out));
    for (int32_t i = 0; i < nb_in; ++i) {
        din[i].min = din[i].opt = din[i].max = din[i].desc.dims = to_dims(n.inputs[i]);
        din[i].desc.type = DataType::kFLOAT;
        din[i].desc.format = TensorFormat::kLINEAR;
        pin[i] = din[i].desc;
    }
    for (int32_t i = 0; i < nb_out; ++i) {
        dout[i].min = dout[i].opt = dout[i].max = dout[i].desc.dims = to_dims(n.outputs[i]);
        dout[i].desc.type = DataType::kFLOAT;
        pout[i] = dout[i].desc;
    }
    check(x.build->configurePlugin(din.data(), nb_in, dout.data(), nb_out) == 0, tag + " configurePlugin accepts the shapes");
    check(x.runtime->onShapeChange(pin.data(), nb_in, pout.data(), nb_out) == 0, tag + " onShapeChange accepts the shapes");
    {
        std::vector<PluginTensorDesc> bad = pin;
        bad[0].dims.nbDims = 2;
        const int before = log.errors;
        const int32_t st = x.runtime->onShapeChange(bad.data(), nb_in, pout.data(), nb_out);
        check(st != 0 && log.errors > before, tag + " onShapeChange rejects a rank-2 input 0 with a logged error (" +
                                                  (log.errors > before ? log.last : std::string("nothing logged")) + ")");
        x.runtime->onShapeChange(pin.data(), nb_in, pout.data(), nb_out);  // back to the real shapes
    }

    const size_t ws = x.build->getWorkspaceSize(din.data(), nb_in, dout.data(), nb_out);
    const size_t want_ws = expected_workspace(n.op, n.inputs);
    check(ws >= want_ws, tag + " getWorkspaceSize " + std::to_string(ws) + " >= " + std::to_string(want_ws) +
                             " bytes the kernel writes");

    check_formats(tag, x.build, n.inputs, nb_out);

    // The serialized fields are the node's fields (what TensorRT stores in an engine).
    const std::set<std::string> ser = field_set(x.runtime->getFieldsToSerialize());
    std::set<std::string> missing;
    const std::set<std::string> want = spec_field_set(n);
    for (const auto& f : want)
        if (!ser.count(f)) missing.insert(f);
    check(missing.empty(), tag + " getFieldsToSerialize " + join(ser) + " holds the node's fields" +
                               (missing.empty() ? "" : " (missing " + join(missing) + ")"));
}

// A plugin whose serialized fields, fed back to the creator, give a plugin with the same fields.
void check_round_trip(const std::string& tag, IPluginCreatorV3One* creator, Plugin x, const NodeSpec& n, Logger& log) {
    const std::set<std::string> first = field_set(x.runtime->getFieldsToSerialize());
    // Copy the collection: it is only valid until the plugin's next call.
    const PluginFieldCollection* fc = x.runtime->getFieldsToSerialize();
    Collection copy;
    for (int32_t i = 0; fc && i < fc->nbFields; ++i) {
        const PluginField& f = fc->fields[i];
        const size_t bytes = f.type == PluginFieldType::kINT32 || f.type == PluginFieldType::kFLOAT32 ? 4 : 8;
        copy.add_raw(f.name, f.type, f.data, bytes * static_cast<size_t>(f.length), f.length);
    }
    std::unique_ptr<IPluginV3> again(creator->createPlugin(creator->getPluginName(), copy.get(), TensorRTPhase::kRUNTIME));
    check(again != nullptr, tag + " createPlugin(getFieldsToSerialize(), kRUNTIME) succeeds");
    if (!again) return;
    Plugin y = capabilities(again.get());
    check(y.ok() && field_set(y.runtime->getFieldsToSerialize()) == first,
          tag + " deserialized plugin serializes the same fields " + join(first));
    if (y.ok()) check_plugin(tag + " [deserialized]", creator, y, n, log);
}

void check_fields(const std::string& name, IPluginCreatorV3One* creator, Logger& log) {
    const PluginFieldCollection* names = creator->getFieldNames();
    bool declared_ok = names != nullptr && names->nbFields >= 0 && (names->nbFields == 0 || names->fields != nullptr);
    for (int32_t i = 0; declared_ok && i < names->nbFields; ++i)
        declared_ok = names->fields[i].name != nullptr &&
                      (names->fields[i].type == PluginFieldType::kINT32 || names->fields[i].type == PluginFieldType::kFLOAT32);
    check(declared_ok, name + " getFieldNames declares named int32/float32 fields");
    if (!declared_ok) return;

    auto expect = [&](Collection& c, bool ok, const std::string& what) {
        const int before = log.errors;
        IPluginV3* p = creator->createPlugin(name.c_str(), c.get(), TensorRTPhase::kBUILD);
        const bool logged = log.errors > before;
        if (ok)
            check(p != nullptr, name + " createPlugin accepts " + what);
        else
            check(p == nullptr && logged, name + " createPlugin rejects " + what + " with a logged error (" +
                                              (logged ? log.last : std::string("nothing logged")) + ")");
        delete p;
    };
    {
        Collection c;
        expect(c, true, "an empty collection (every field at its default)");
    }
    {
        Collection c;
        c.add_string("plugin_version", "1");
        c.add_string("plugin_namespace", "edgeforge");
        expect(c, true, "plugin_version/plugin_namespace strings naming this library");
    }
    {
        Collection c;
        c.add_string("plugin_version", "2");
        expect(c, false, "plugin_version '2'");
    }
    {
        Collection c;
        c.add_int("no_such_field", 1);
        expect(c, false, "an extra field 'no_such_field'");
    }
    for (int32_t i = 0; i < names->nbFields; ++i) {
        const std::string f = names->fields[i].name;
        {
            Collection c;
            c.add_raw(f, PluginFieldType::kCHAR, "1", 1, 1);
            expect(c, false, "field '" + f + "' as a one-character string (wrong type)");
        }
        {
            Collection c;
            c.add_raw(f, names->fields[i].type, nullptr, 0, 1);
            expect(c, false, "field '" + f + "' with no data");
        }
        {
            Collection c;
            const int32_t two[2] = {0, 0};
            c.add_raw(f, PluginFieldType::kINT32, two, sizeof two, 2);
            expect(c, false, "field '" + f + "' with 2 values");
        }
        if (names->fields[i].type == PluginFieldType::kINT32) {
            // Every int field of these ops is a 0/1 flag.
            for (int32_t v : {-1, 2}) {
                Collection c;
                c.add_int(f, v);
                expect(c, false, "field '" + f + "' = " + std::to_string(v) + " (out of range)");
            }
            {
                Collection c;
                c.add_int64(f, int64_t{1} << 40);
                expect(c, false, "field '" + f + "' = 2^40 as int64 (out of range)");
            }
            {
                Collection c;
                c.add_int64(f, 1);
                expect(c, true, "field '" + f + "' = 1 as int64");
            }
            {
                Collection c;
                c.add_float(f, 1.0f);
                expect(c, false, "field '" + f + "' as a float (wrong type)");
            }
        } else {
            for (float v : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
                Collection c;
                c.add_float(f, v);
                expect(c, false, "field '" + f + "' = " + std::to_string(v) + " (out of range)");
            }
            {
                Collection c;
                c.add_float(f, 0.125f);
                expect(c, true, "field '" + f + "' = 0.125");
            }
        }
    }
}

bool gpu_present() {
    using CountFn = int (*)(int*);
    auto fn = reinterpret_cast<CountFn>(dlsym(RTLD_DEFAULT, "cudaGetDeviceCount"));
    int n = 0;
    return fn != nullptr && fn(&n) == 0 && n > 0;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: %s LIBRARY SPEC\n", argv[0]);
        return 2;
    }
    Spec spec;
    if (!read_spec(argv[2], spec)) {
        std::fprintf(stderr, "cannot read %s\n", argv[2]);
        return 2;
    }
    // As IPluginRegistry::loadLibrary: dlopen, setLoggerFinder, getCreators.
    void* lib = dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL);
    check(lib != nullptr, std::string("dlopen ") + argv[1] + (lib ? "" : std::string(": ") + dlerror()));
    if (!lib) return 1;
    auto get_creators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
    auto set_finder = reinterpret_cast<SetLoggerFinder>(dlsym(lib, "setLoggerFinder"));
    check(get_creators != nullptr, "the library exports getCreators");
    check(set_finder != nullptr, "the library exports setLoggerFinder");
    if (!get_creators || !set_finder) return 1;
    Logger logger;
    LoggerFinder finder(&logger);
    set_finder(&finder);
    int32_t nb = -1;
    IPluginCreatorInterface* const* creators = get_creators(nb);
    check(creators != nullptr && nb == static_cast<int32_t>(spec.creators.size()),
          "getCreators gives " + std::to_string(nb) + " creators (the exporter names " +
              std::to_string(spec.creators.size()) + ")");
    std::map<std::string, IPluginCreatorV3One*> by_name;
    for (int32_t i = 0; creators && i < nb; ++i) {
        IPluginCreatorInterface* c = creators[i];
        if (c == nullptr) {
            check(false, "creator " + std::to_string(i) + " is not null");
            continue;
        }
        const InterfaceInfo info = c->getInterfaceInfo();
        const bool v3 = std::string(info.kind) == "PLUGIN CREATOR_V3ONE" && info.major == 1;
        check(v3, "creator " + std::to_string(i) + " is an IPluginCreatorV3One (" + info.kind + " " +
                      std::to_string(info.major) + "." + std::to_string(info.minor) + ")");
        if (!v3) continue;
        auto* c3 = static_cast<IPluginCreatorV3One*>(c);
        by_name[c3->getPluginName()] = c3;
    }
    for (const auto& want : spec.creators) {
        auto it = by_name.find(want[0]);
        if (it == by_name.end()) {
            check(false, "a creator for the exporter's " + want[0] + " nodes");
            continue;
        }
        IPluginCreatorV3One* c = it->second;
        check(std::string(c->getPluginVersion()) == want[1] && std::string(c->getPluginNamespace()) == want[2],
              want[0] + " creator version/namespace " + c->getPluginVersion() + "/" + c->getPluginNamespace() +
                  " == the exported nodes' plugin_version/plugin_namespace " + want[1] + "/" + want[2]);
        check_fields(want[0], c, logger);
    }

    const bool gpu = gpu_present();
    int index = 0;
    for (const NodeSpec& n : spec.nodes) {
        const std::string tag = n.op + "#" + std::to_string(index++);
        auto it = by_name.find(n.op);
        if (it == by_name.end()) {
            check(false, tag + ": no creator named " + n.op);
            continue;
        }
        IPluginCreatorV3One* creator = it->second;
        Collection fields = node_fields(creator, n);
        IPluginV3* p = creator->createPlugin(n.op.c_str(), fields.get(), TensorRTPhase::kBUILD);
        check(p != nullptr, tag + " createPlugin from the node's fields (" + n.line + ")");
        if (!p) continue;
        check_plugin(tag, creator, capabilities(p), n, logger);
        check_round_trip(tag, creator, capabilities(p), n, logger);

        // clone: an independent copy that outlives the original.
        IPluginV3* cl = p->clone();
        check(cl != nullptr && cl != p, tag + " clone gives a new plugin");
        ResourceContext ctx;
        IPluginV3* attached = capabilities(p).runtime->attachToContext(&ctx);
        check(attached != nullptr && attached != p, tag + " attachToContext gives a new plugin");
        delete p;  // the copies must not depend on the original
        if (cl) check_plugin(tag + " [clone]", creator, capabilities(cl), n, logger);
        if (attached) check_plugin(tag + " [attached]", creator, capabilities(attached), n, logger);

        // enqueue without a GPU returns an error instead of crashing.
        if (attached && !gpu) {
            Plugin a = capabilities(attached);
            std::vector<PluginTensorDesc> in(n.inputs.size()), out(n.outputs.size());
            for (size_t i = 0; i < n.inputs.size(); ++i) {
                in[i].dims = to_dims(n.inputs[i]);
                in[i].type = DataType::kFLOAT;
                in[i].format = TensorFormat::kLINEAR;
            }
            for (size_t i = 0; i < n.outputs.size(); ++i) {
                out[i].dims = to_dims(n.outputs[i]);
                out[i].type = DataType::kFLOAT;
            }
            a.runtime->onShapeChange(in.data(), static_cast<int32_t>(in.size()), out.data(), static_cast<int32_t>(out.size()));
            std::vector<const void*> ip(n.inputs.size(), nullptr);
            std::vector<void*> op(n.outputs.size(), nullptr);
            const int before = logger.errors;
            const int32_t st = a.runtime->enqueue(in.data(), out.data(), ip.data(), op.data(), nullptr, nullptr);
            check(st != 0, tag + " enqueue without a GPU returns an error (" + std::to_string(st) + (logger.errors > before ? ", logged: " + logger.last : "") + ")");
        }
        delete cl;
        delete attached;
    }
    if (gpu) std::printf("note: a GPU is present; enqueue is exercised by the TensorRT GPU test instead\n");
    std::printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
