namespace Grid.Grains; internal static class Placeholder {}
