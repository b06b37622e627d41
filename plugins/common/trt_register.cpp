// Entry points of the plugin library for TensorRT's IPluginRegistry::loadLibrary (and trtexec
// --dynamicPlugins): the logger hand-over and the list of IPluginV3 creators.
#include "trt_plugin_base.h"

extern "C" {

__attribute__((visibility("default"))) void setLoggerFinder(nvinfer1::ILoggerFinder* finder) {
    ef::trt::set_logger_finder(finder);
}

__attribute__((visibility("default"))) nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
    static nvinfer1::IPluginCreatorInterface* const creators[] = {ef::trt::linear_scan_creator(),
                                                                   ef::trt::gated_attention_creator()};
    nbCreators = 2;
    return creators;
}

}  // extern "C"
