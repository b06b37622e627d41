// Entry point ONNX Runtime calls when the library is registered with a session
// (SessionOptions.register_custom_ops_library): adds the edgeforge domain with both ops.
#include <mutex>
#include <vector>

#include "ort_op_base.h"

namespace {

// Domains must outlive every session that uses them; they are released when the library unloads.
struct Domains {
    const OrtApi* api = nullptr;
    std::vector<OrtCustomOpDomain*> list;
    std::mutex mu;
    ~Domains() {
        for (OrtCustomOpDomain* d : list) api->ReleaseCustomOpDomain(d);
    }
};
Domains& domains() {
    static Domains d;
    return d;
}

}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
    const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
    if (api == nullptr) return nullptr;  // older runtime than the headers: nothing can be reported
    Ort::InitApi(api);
    OrtCustomOpDomain* domain = nullptr;
    if (OrtStatus* st = api->CreateCustomOpDomain("edgeforge", &domain)) return st;
    for (const OrtCustomOp* op : {ef::ort::linear_scan_op(), ef::ort::gated_attention_op()}) {
        if (OrtStatus* st = api->CustomOpDomain_Add(domain, const_cast<OrtCustomOp*>(op))) {
            api->ReleaseCustomOpDomain(domain);
            return st;
        }
    }
    {
        Domains& d = domains();
        std::lock_guard<std::mutex> lock(d.mu);
        d.api = api;
        d.list.push_back(domain);
    }
    return api->AddCustomOpDomain(options, domain);
}
