// Shared base of the TensorRT IPluginV3 plugins: attribute fields (parse/serialize), the core,
// build and runtime capabilities every edgeforge plugin has in common, and a creator template.
// Includes only NvInferRuntime.h (NvInferPlugin.h is not needed and is a stub in some header sets).
#pragma once

#include <NvInferRuntime.h>

#include <map>
#include <string>
#include <vector>

namespace ef {
namespace trt {

constexpr const char* kPluginVersion = "1";
constexpr const char* kPluginNamespace = "edgeforge";

// Logs through the logger TensorRT hands over in setLoggerFinder (no-op before that).
void log_error(const std::string& message) noexcept;
void set_logger_finder(nvinfer1::ILoggerFinder* finder) noexcept;

// The fields a plugin declares (its creator's getFieldNames): name and type.
using FieldSpec = std::vector<std::pair<const char*, nvinfer1::PluginFieldType>>;

// Named int and float attributes of one plugin instance. TensorRT's ONNX parser passes ONNX int
// attributes as kINT32 fields and floats as kFLOAT32; other integer (float) widths are accepted
// for declared int (float) fields. A missing field takes the op's default (as a missing ONNX
// attribute does); anything else that is not a declared field of a numeric type, with one value,
// in range for its type, is an error (std::invalid_argument naming the field), so that a wrong
// collection fails at createPlugin instead of running with a silently ignored setting.
// plugin_version / plugin_namespace (strings some producers pass along) must name this library.
class Fields {
  public:
    static Fields parse(const nvinfer1::PluginFieldCollection* fc, const FieldSpec& declared);
    void set_int(const std::string& name, int32_t v) { ints_[name] = v; }
    void set_float(const std::string& name, float v) { floats_[name] = v; }
    int32_t get_int(const std::string& name, int32_t fallback) const;
    float get_float(const std::string& name, float fallback) const;
    // A collection over this object's storage, valid until the next call or mutation.
    const nvinfer1::PluginFieldCollection* collection();

  private:
    std::map<std::string, int32_t> ints_;
    std::map<std::string, float> floats_;
    std::vector<nvinfer1::PluginField> list_;
    nvinfer1::PluginFieldCollection fc_{};
};

// Core + build + runtime capabilities. A concrete plugin supplies its name, output shapes,
// workspace size, launch, and clone; all tensors are linear, of one type (float or half).
class PluginBase : public nvinfer1::IPluginV3,
                   public nvinfer1::IPluginV3OneCore,
                   public nvinfer1::IPluginV3OneBuild,
                   public nvinfer1::IPluginV3OneRuntime {
  public:
    PluginBase(const char* name, Fields fields) : name_(name), fields_(std::move(fields)) {}
    ~PluginBase() override = default;

    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;

    // Core
    const char* getPluginName() const noexcept override { return name_; }
    const char* getPluginVersion() const noexcept override { return kPluginVersion; }
    const char* getPluginNamespace() const noexcept override { return kPluginNamespace; }

    // Build
    int32_t configurePlugin(const nvinfer1::DynamicPluginTensorDesc* in, int32_t nbInputs,
                            const nvinfer1::DynamicPluginTensorDesc* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs, const nvinfer1::DataType* inputTypes,
                               int32_t nbInputs) const noexcept override;
    bool supportsFormatCombination(int32_t pos, const nvinfer1::DynamicPluginTensorDesc* inOut, int32_t nbInputs,
                                   int32_t nbOutputs) noexcept override;

    // Runtime
    int32_t onShapeChange(const nvinfer1::PluginTensorDesc* in, int32_t nbInputs, const nvinfer1::PluginTensorDesc* out,
                          int32_t nbOutputs) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext*) noexcept override { return clone(); }
    const nvinfer1::PluginFieldCollection* getFieldsToSerialize() noexcept override { return fields_.collection(); }

  protected:
    // Validates the input shapes and records what enqueue needs (enqueue is not told the input
    // count); called from configurePlugin and onShapeChange. Returns an error message or "".
    virtual std::string configure_shapes(const nvinfer1::Dims* in, int32_t nbInputs) = 0;

    const char* name_;
    Fields fields_;
};

// Creator of plugin P: P(Fields) constructs it (may throw std::exception on an out-of-range value);
// P::kName, P::field_names() (a FieldSpec). createPlugin returns null, with the reason logged, for
// a collection Fields::parse or P rejects.
template <typename P>
class Creator : public nvinfer1::IPluginCreatorV3One {
  public:
    Creator() {
        for (const auto& f : P::field_names()) names_.emplace_back(f.first, nullptr, f.second, 1);
        fc_.nbFields = static_cast<int32_t>(names_.size());
        fc_.fields = names_.data();
    }
    nvinfer1::IPluginV3* createPlugin(const char*, const nvinfer1::PluginFieldCollection* fc,
                                      nvinfer1::TensorRTPhase) noexcept override {
        try {
            return new P(Fields::parse(fc, P::field_names()));
        } catch (const std::exception& e) {
            log_error(std::string(P::kName) + ": " + e.what());
            return nullptr;
        }
    }
    const nvinfer1::PluginFieldCollection* getFieldNames() noexcept override { return &fc_; }
    const char* getPluginName() const noexcept override { return P::kName; }
    const char* getPluginVersion() const noexcept override { return kPluginVersion; }
    const char* getPluginNamespace() const noexcept override { return kPluginNamespace; }

  private:
    std::vector<nvinfer1::PluginField> names_;
    nvinfer1::PluginFieldCollection fc_{};
};

// Creators of both ops (defined in their folders), collected by trt_register.cpp.
nvinfer1::IPluginCreatorInterface* linear_scan_creator();
nvinfer1::IPluginCreatorInterface* gated_attention_creator();

std::string dims_str(const nvinfer1::Dims& d);

}  // namespace trt
}  // namespace ef
