#include "trt_plugin_base.h"

#include <atomic>
#include <climits>
#include <sstream>
#include <stdexcept>

namespace ef {
namespace trt {

namespace {
std::atomic<nvinfer1::ILoggerFinder*> g_finder{nullptr};
}

void set_logger_finder(nvinfer1::ILoggerFinder* finder) noexcept { g_finder.store(finder); }

void log_error(const std::string& message) noexcept {
    nvinfer1::ILoggerFinder* finder = g_finder.load();
    if (finder == nullptr) return;
    if (nvinfer1::ILogger* logger = finder->findLogger())
        logger->log(nvinfer1::ILogger::Severity::kERROR, ("edgeforge plugin: " + message).c_str());
}

std::string dims_str(const nvinfer1::Dims& d) {
    std::ostringstream o;
    o << "(";
    for (int32_t i = 0; i < d.nbDims; ++i) o << (i ? ", " : "") << d.d[i];
    o << ")";
    return o.str();
}

namespace {

const char* type_name(nvinfer1::PluginFieldType t) {
    using T = nvinfer1::PluginFieldType;
    switch (t) {
        case T::kFLOAT16: return "kFLOAT16";
        case T::kFLOAT32: return "kFLOAT32";
        case T::kFLOAT64: return "kFLOAT64";
        case T::kINT8: return "kINT8";
        case T::kINT16: return "kINT16";
        case T::kINT32: return "kINT32";
        case T::kCHAR: return "kCHAR";
        case T::kDIMS: return "kDIMS";
        case T::kUNKNOWN: return "kUNKNOWN";
        case T::kINT64: return "kINT64";
        default: return "another type";
    }
}

bool is_int_type(nvinfer1::PluginFieldType t) {
    using T = nvinfer1::PluginFieldType;
    return t == T::kINT8 || t == T::kINT16 || t == T::kINT32 || t == T::kINT64;
}

}  // namespace

Fields Fields::parse(const nvinfer1::PluginFieldCollection* fc, const FieldSpec& declared) {
    using T = nvinfer1::PluginFieldType;
    Fields f;
    if (fc == nullptr) return f;
    if (fc->nbFields < 0 || (fc->nbFields > 0 && fc->fields == nullptr))
        throw std::invalid_argument("malformed PluginFieldCollection (nbFields " + std::to_string(fc->nbFields) + ")");
    for (int32_t i = 0; i < fc->nbFields; ++i) {
        const nvinfer1::PluginField& pf = fc->fields[i];
        if (pf.name == nullptr) throw std::invalid_argument("field " + std::to_string(i) + " has no name");
        const std::string name(pf.name);
        if (pf.data == nullptr || pf.length < 1)
            throw std::invalid_argument("field '" + name + "' has no value (length " + std::to_string(pf.length) + ")");
        if (name == "plugin_version" || name == "plugin_namespace") {
            const char* want = name == "plugin_version" ? kPluginVersion : kPluginNamespace;
            std::string got = pf.type == T::kCHAR ? std::string(static_cast<const char*>(pf.data),
                                                                static_cast<size_t>(pf.length))
                                                  : std::string("<") + type_name(pf.type) + ">";
            while (!got.empty() && got.back() == '\0') got.pop_back();
            if (got != want) throw std::invalid_argument(name + " '" + got + "' is not '" + want + "'");
            continue;
        }
        const FieldSpec::value_type* spec = nullptr;
        for (const auto& d : declared)
            if (name == d.first) spec = &d;
        if (spec == nullptr) {
            std::string known;
            for (const auto& d : declared) known += (known.empty() ? "" : ", ") + std::string(d.first);
            throw std::invalid_argument("unknown field '" + name + "' (fields: " + known + ")");
        }
        if (pf.length != 1)
            throw std::invalid_argument("field '" + name + "' must hold one value, got " + std::to_string(pf.length));
        const bool want_int = is_int_type(spec->second);
        int64_t iv = 0;
        double fv = 0.0;
        switch (pf.type) {
            case T::kINT32: iv = *static_cast<const int32_t*>(pf.data); fv = static_cast<double>(iv); break;
            case T::kINT64: iv = *static_cast<const int64_t*>(pf.data); fv = static_cast<double>(iv); break;
            case T::kINT16: iv = *static_cast<const int16_t*>(pf.data); fv = static_cast<double>(iv); break;
            case T::kINT8: iv = *static_cast<const int8_t*>(pf.data); fv = static_cast<double>(iv); break;
            case T::kFLOAT32: fv = *static_cast<const float*>(pf.data); break;
            case T::kFLOAT64: fv = *static_cast<const double*>(pf.data); break;
            default:
                throw std::invalid_argument("field '" + name + "' has type " + type_name(pf.type) + ", expected " +
                                            type_name(spec->second));
        }
        if (want_int) {
            if (!is_int_type(pf.type))
                throw std::invalid_argument("field '" + name + "' has type " + type_name(pf.type) +
                                            ", expected an integer type");
            if (iv < INT32_MIN || iv > INT32_MAX)
                throw std::invalid_argument("field '" + name + "' = " + std::to_string(iv) + " is out of int32 range");
            f.ints_[name] = static_cast<int32_t>(iv);
        } else {
            f.floats_[name] = static_cast<float>(fv);
        }
    }
    return f;
}

int32_t Fields::get_int(const std::string& name, int32_t fallback) const {
    auto it = ints_.find(name);
    return it == ints_.end() ? fallback : it->second;
}

float Fields::get_float(const std::string& name, float fallback) const {
    auto it = floats_.find(name);
    if (it != floats_.end()) return it->second;
    auto ii = ints_.find(name);
    return ii == ints_.end() ? fallback : static_cast<float>(ii->second);
}

const nvinfer1::PluginFieldCollection* Fields::collection() {
    list_.clear();
    for (auto& kv : ints_) list_.emplace_back(kv.first.c_str(), &kv.second, nvinfer1::PluginFieldType::kINT32, 1);
    for (auto& kv : floats_) list_.emplace_back(kv.first.c_str(), &kv.second, nvinfer1::PluginFieldType::kFLOAT32, 1);
    fc_.nbFields = static_cast<int32_t>(list_.size());
    fc_.fields = list_.data();
    return &fc_;
}

nvinfer1::IPluginCapability* PluginBase::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept {
    switch (type) {
        case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
        case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
        case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

int32_t PluginBase::configurePlugin(const nvinfer1::DynamicPluginTensorDesc* in, int32_t nbInputs,
                                    const nvinfer1::DynamicPluginTensorDesc*, int32_t) noexcept {
    std::vector<nvinfer1::Dims> dims(static_cast<size_t>(nbInputs));
    for (int32_t i = 0; i < nbInputs; ++i) dims[i] = in[i].max;  // worst case of a dynamic profile
    const std::string err = configure_shapes(dims.data(), nbInputs);
    if (!err.empty()) log_error(err);
    return err.empty() ? 0 : -1;
}

int32_t PluginBase::getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
                                       const nvinfer1::DataType* inputTypes, int32_t) const noexcept {
    for (int32_t i = 0; i < nbOutputs; ++i) outputTypes[i] = inputTypes[0];
    return 0;
}

bool PluginBase::supportsFormatCombination(int32_t pos, const nvinfer1::DynamicPluginTensorDesc* inOut, int32_t,
                                           int32_t) noexcept {
    const nvinfer1::PluginTensorDesc& d = inOut[pos].desc;
    if (d.format != nvinfer1::TensorFormat::kLINEAR) return false;
    if (pos == 0) return d.type == nvinfer1::DataType::kFLOAT || d.type == nvinfer1::DataType::kHALF;
    return d.type == inOut[0].desc.type;
}

int32_t PluginBase::onShapeChange(const nvinfer1::PluginTensorDesc* in, int32_t nbInputs,
                                  const nvinfer1::PluginTensorDesc*, int32_t) noexcept {
    std::vector<nvinfer1::Dims> dims(static_cast<size_t>(nbInputs));
    for (int32_t i = 0; i < nbInputs; ++i) dims[i] = in[i].dims;
    const std::string err = configure_shapes(dims.data(), nbInputs);
    if (!err.empty()) log_error(err);
    return err.empty() ? 0 : -1;
}

}  // namespace trt
}  // namespace ef
