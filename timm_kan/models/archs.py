"""The ViT sizes every KAN family is registered at (the ViT paper's sizes, as timm names them)."""

__all__ = ['ARCHS']

# architecture name -> (ViT arguments, short alias, in21k weights in timm's hub org, classes of that head)
ARCHS = {
    'tiny_patch16_224': (dict(patch_size=16, embed_dim=192, depth=12, num_heads=3), 't16',
                         'vit_tiny_patch16_224.augreg_in21k', 21843),
    'small_patch16_224': (dict(patch_size=16, embed_dim=384, depth=12, num_heads=6), 's16',
                          'vit_small_patch16_224.augreg_in21k', 21843),
    'base_patch16_224': (dict(patch_size=16, embed_dim=768, depth=12, num_heads=12), 'b16',
                         'vit_base_patch16_224.augreg_in21k', 21843),
    'base_patch32_224': (dict(patch_size=32, embed_dim=768, depth=12, num_heads=12), 'b32',
                         'vit_base_patch32_224.augreg_in21k', 21843),
    'large_patch16_224': (dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16), 'l16',
                          'vit_large_patch16_224.augreg_in21k', 21843),
    'large_patch32_224': (dict(patch_size=32, embed_dim=1024, depth=24, num_heads=16), 'l32',
                          'vit_large_patch32_224.orig_in21k', 0),
    'huge_patch14_224': (dict(patch_size=14, embed_dim=1280, depth=32, num_heads=16), 'h14',
                         'vit_huge_patch14_224.orig_in21k', 0),
}
