// The dmfx operator library: every schema in one place. Kernels and autograd are registered per
// op in csrc/<op>.cpp; fake (meta) kernels from Python (dmfx/ops.py).
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(dmfx, m) {
  m.def(
      "sparse_rows_matmul(Tensor indptr, Tensor indices, Tensor? values, Tensor rows, "
      "Tensor weight, bool validate=True) -> Tensor");
  m.def(
      "sparse_rows_matmul_backward_weight(Tensor indptr, Tensor indices, Tensor? values, "
      "Tensor rows, Tensor grad_out, SymInt num_weight_rows, bool validate=True) -> Tensor");
  m.def(
      "sparse_rows_matmul_backward_values(Tensor indptr, Tensor indices, Tensor rows, "
      "Tensor weight, Tensor grad_out, bool validate=True) -> Tensor");
  m.def(
      "cosine_nce_loss(Tensor p, Tensor q, Tensor target, float mu=1e-06, "
      "str reduction=\"mean\", bool validate=True) -> Tensor");
  m.def(
      "cosine_nce_loss_backward(Tensor grad, Tensor p, Tensor q, Tensor target, float mu, "
      "str reduction) -> (Tensor, Tensor)");
  m.def(
      "hybrid_bce_loss(Tensor logits, Tensor implicit_target, Tensor explicit_target, float eta, "
      "str reduction=\"mean\", bool validate=True) -> Tensor");
  m.def(
      "hybrid_bce_loss_backward(Tensor grad, Tensor logits, Tensor implicit_target, "
      "Tensor explicit_target, float eta, str reduction) -> Tensor");
  m.def(
      "sample_negatives(Tensor indptr, Tensor indices, Tensor users, int num_items, "
      "int num_negatives, int seed, bool validate=True) -> Tensor");
  m.def(
      "row_sparse_adam_(Tensor(a!) weight, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, "
      "Tensor rows, Tensor grad_rows, float lr, float beta1, float beta2, float eps, int step, "
      "bool validate=True) -> ()");
}

namespace {

PyObject* cuda_enabled(PyObject*, PyObject*) {
#ifdef WITH_CUDA
  Py_RETURN_TRUE;
#else
  Py_RETURN_FALSE;
#endif
}

// Without OpenMP, at::parallel_for runs every CPU kernel on the calling thread (see setup.py).
PyObject* openmp_enabled(PyObject*, PyObject*) {
#ifdef _OPENMP
  Py_RETURN_TRUE;
#else
  Py_RETURN_FALSE;
#endif
}

PyMethodDef methods[] = {
    {"cuda_enabled", cuda_enabled, METH_NOARGS, "Whether the CUDA kernels were built."},
    {"openmp_enabled", openmp_enabled, METH_NOARGS,
     "Whether the CPU kernels were built to run on torch's OpenMP threads."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C",
                          "dmfx kernels; importing this module registers torch.ops.dmfx.", -1,
                          methods};

}  // namespace

// Importing dmfx._C loads this library, whose static initialisers register the ops.
extern "C" PyObject* PyInit__C(void) { return PyModule_Create(&module_def); }
