#include "trt_plugin_base.h"

#include <atomic>
#include <sstream>

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

Fields Fields::parse(const nvinfer1::PluginFieldCollection* fc) {
    using T = nvinfer1::PluginFieldType;
    Fields f;
    for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i) {
        const nvinfer1::PluginField& pf = fc->fields[i];
        if (pf.name == nullptr || pf.data == nullptr || pf.length < 1) continue;
        const std::string name(pf.name);
        switch (pf.type) {
            case T::kINT32: f.ints_[name] = *static_cast<const int32_t*>(pf.data); break;
            case T::kINT64: f.ints_[name] = static_cast<int32_t>(*static_cast<const int64_t*>(pf.data)); break;
            case T::kINT16: f.ints_[name] = *static_cast<const int16_t*>(pf.data); break;
            case T::kINT8: f.ints_[name] = *static_cast<const int8_t*>(pf.data); break;
            case T::kFLOAT32: f.floats_[name] = *static_cast<const float*>(pf.data); break;
            case T::kFLOAT64: f.floats_[name] = static_cast<float>(*static_cast<const double*>(pf.data)); break;
            default: break;  // strings (plugin_version/namespace) and others are not plugin attributes
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
